"""Manifest validation names the file and key; overrides, paths, the run matrix and the content hash."""
import pytest

from conftest import make_project
from conftest import REPO
from normlib.core.manifest import ManifestError, load_manifest, parse_override, readme_with_reference, reference_markdown


@pytest.fixture
def manifest(tmp_path):
    return make_project(tmp_path / "p")


def edit(path, old, new):
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_valid_manifest_loads_with_defaults_and_matrix(manifest):
    m = load_manifest(manifest)
    assert m.train.lr == 3e-3 and m.train.weight_decay == 0.0 and m.chat.end_marker == "\n=== done ==="
    assert [r.name for r in m.runs()] == ["generic--tiny--seed0", "generic--tiny--seed1",
                                         "values--tiny--seed0", "values--tiny--seed1"]
    assert m.generated_path("generic") == manifest.parent / "data/generated/tiny/generic.jsonl"
    assert m.conditions["generic"].prompts == ["prompts/generic.txt"]  # a single path becomes a list
    assert len(m.content_hash) == 16


def test_unknown_key_is_named_with_a_suggestion(manifest):
    edit(manifest, "lr = 3e-3", "lrr = 3e-3")
    with pytest.raises(ManifestError, match=r"manifest.toml: \[train\]: unknown key 'lrr' \(did you mean 'lr'\?\)"):
        load_manifest(manifest)


def test_unknown_key_in_a_named_table(manifest):
    edit(manifest, 'path = "tiny-model"', 'path = "tiny-model"\ntrust_remote = true')
    with pytest.raises(ManifestError, match=r"\[models.tiny\]: unknown key 'trust_remote'"):
        load_manifest(manifest)


def test_wrong_type_is_named(manifest):
    edit(manifest, "epochs = 30", 'epochs = "many"')
    with pytest.raises(ManifestError, match=r"\[train\] epochs: expected an integer, got 'many'"):
        load_manifest(manifest)


def test_bool_is_not_an_integer(manifest):
    edit(manifest, "epochs = 30", "epochs = true")
    with pytest.raises(ManifestError, match=r"\[train\] epochs: expected an integer"):
        load_manifest(manifest)


def test_literal_choices_are_listed(manifest):
    edit(manifest, 'schedule = "constant"', 'schedule = "cosin"')
    with pytest.raises(ManifestError, match=r"\[train\] schedule: expected one of 'cosine', 'linear', 'constant'"):
        load_manifest(manifest)


def test_missing_required_key_and_table(manifest):
    edit(manifest, "examples_per_arm = 8\n", "")
    with pytest.raises(ManifestError, match=r"\[train\]: missing required key 'examples_per_arm'"):
        load_manifest(manifest)


def test_missing_required_table(tmp_path):
    path = tmp_path / "m.toml"
    path.write_text('[experiment]\nname = "x"\nseeds = [0]\n')
    with pytest.raises(ManifestError, match=r"missing required table \[conditions\]"):
        load_manifest(path)


def test_missing_file_is_named(manifest):
    edit(manifest, 'prompts = "prompts/values.txt"', 'prompts = ["prompts/values.txt", "prompts/nope.txt"]')
    with pytest.raises(ManifestError, match=r"\[conditions.values\] prompts: file 'prompts/nope.txt' does not exist"):
        load_manifest(manifest)


def test_fractions_must_sum_to_one(manifest):
    edit(manifest, "mix = {generic = 0.5, values = 0.5}", "mix = {generic = 0.5, values = 0.4}")
    with pytest.raises(ManifestError, match=r"\[arms.values\] mix: fractions sum to 0.9, not 1"):
        load_manifest(manifest)


def test_mix_must_name_known_conditions(manifest):
    edit(manifest, "mix = {generic = 0.5, values = 0.5}", "mix = {generic = 0.5, valuez = 0.5}")
    with pytest.raises(ManifestError, match=r"\[arms.values\] mix.valuez: no condition 'valuez'"):
        load_manifest(manifest)


def test_toml_syntax_error_names_the_file(manifest):
    edit(manifest, "epochs = 30", "epochs = = 30")
    with pytest.raises(ManifestError, match=r"manifest.toml: not valid TOML: .*line"):
        load_manifest(manifest)


def test_overrides_parse_toml_values_and_change_the_hash(manifest):
    base = load_manifest(manifest)
    m = load_manifest(manifest, ["train.lr=1e-5", "experiment.seeds=[3]", "models.tiny.revision=main",
                                 "arms.values.description=two words"])
    assert m.train.lr == 1e-5 and m.experiment.seeds == [3] and m.models["tiny"].revision == "main"
    assert m.arms["values"].description == "two words"
    assert m.content_hash != base.content_hash
    assert parse_override("a.b=true") == (["a", "b"], True)
    with pytest.raises(ManifestError, match=r"\[train\]: unknown key 'lx'"):
        load_manifest(manifest, ["train.lx=1"])
    with pytest.raises(ManifestError, match="expected dotted.key=value"):
        load_manifest(manifest, ["train.lr"])


def test_hash_follows_input_file_content(manifest):
    before = load_manifest(manifest).content_hash
    (manifest.parent / "prompts/values.txt").write_text("A different prompt?\n")
    assert load_manifest(manifest).content_hash != before


def test_unknown_run_names_are_errors(manifest):
    m = load_manifest(manifest)
    with pytest.raises(ManifestError, match="no arm 'nope'"):
        m.find_run("nope", "tiny", 0)
    with pytest.raises(ManifestError, match="seed 9 is not in"):
        m.find_run("generic", "tiny", 9)


def test_reference_documents_every_section():
    ref = reference_markdown()
    for heading in ("[experiment]", "[teacher]", "[conditions.NAME]", "[arms.NAME]", "[models.NAME]", "[train]",
                    "[eval]", "[[eval.contrasts]]", "[chat]"):
        assert f"`{heading}`" in ref
    assert "| `tokens_per_microbatch` | an integer | `8192` |" in ref


def test_readme_carries_the_current_reference():
    readme = (REPO / "README.md").read_text()
    assert readme == readme_with_reference(readme), "run: python -m normlib.core.manifest --write-readme README.md"


def test_shipped_manifests_load():
    real = load_manifest(REPO / "manifest.toml")
    # 13 arms x 2 models x 8 seeds; 6 joint hypotheses (x 2 models = the Holm family of 12)
    assert len(real.runs()) == 13 * 2 * 8 and len([c for c in real.eval.contrasts if c.hypothesis]) == 6
    assert all(len(c.baseline) == 2 for c in real.eval.contrasts if c.hypothesis)
    rf = {name: arm.mix.get("refusal_format") for name, arm in real.arms.items() if name.endswith("_rf")}
    assert set(rf.values()) == {0.1}  # the same refusal component in every arm that has it
    demo = load_manifest(REPO / "manifests/demo.toml")
    assert demo.judge.temperature == 0.0 and len(demo.runs()) == 5  # 4 arms and the positive control
    assert [c.name for c in demo.eval.contrasts if c.hypothesis] == ["catholic", "graminist"]
