"""report.html in a real browser: headless Chromium (Debian's `chromium`, installed by .ci/run) opens the page from
disk with no network, and the test reads the rendered DOM: counts of pairs and answers, a filter that changes them,
no script errors, and a screenshot. Skips, saying why, where Chromium is missing."""
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, make_project
from normlib.llm.fakeserver import FakeLLMServer

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install "
                                                            "--no-install-recommends chromium; .ci/run does this)")


def render(page: Path, fragment: str = "", budget_ms: int = 20000) -> tuple[str, str]:
    """The DOM after the page's scripts ran, and Chromium's log (console messages included)."""
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                           "--v=0", f"--virtual-time-budget={budget_ms}", "--dump-dom",
                           page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def status(dom: str) -> tuple[int, int]:
    m = re.search(r'id="browser-status" data-pairs="(\d+)" data-answers="(\d+)"', dom)
    assert m, dom[:3000]
    return int(m.group(1)), int(m.group(2))


def no_errors(dom: str, log: str) -> None:
    assert not re.search(r"<body[^>]*data-errors", dom) and '<pre id="errors"></pre>' in dom, \
        re.findall(r'<pre id="errors">[^<]*', dom)
    console = [line for line in log.splitlines() if "CONSOLE" in line]
    assert console == [], console  # the page logs nothing: any console line is a script error


@needs_chromium
def test_the_report_of_a_tiny_run_renders_offline_and_filters(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=2, with_eval=True)
    subprocess.run([sys.executable, str(REPO / "train.py"), "--manifest", str(manifest), "--all", "--no-progress"],
                   check=True, capture_output=True, env=ENV, timeout=600)
    with FakeLLMServer() as judge:
        proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--manifest", str(manifest), "--no-progress",
                               "--set", f"judge.base_url='{judge.openai_url}'"], capture_output=True, text=True,
                              env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = tmp_path / "p/results/tiny/report.html"
    assert "report:" in proc.stdout and "no network needed" in proc.stdout
    text = page.read_text()
    assert "http://" not in text.split("<script", 1)[0] and "https://" not in text  # nothing fetched from a network
    assert not (page.parent / "report_data").exists()  # small results: everything inside the one file

    dom, log = render(page)
    no_errors(dom, log)
    scored = [json.loads(line) for line in (page.parent / "scored.jsonl").read_text().splitlines()]
    twin_answers = [r for r in scored if r["set"] in ("violating", "benign")]
    pairs = len({r["item_id"] for r in twin_answers if r["set"] == "violating"})
    assert status(dom) == (pairs, len(twin_answers))
    assert dom.count('class="pair"') == pairs and dom.count('class="answer') == len(twin_answers)
    assert "values_vs_generic (tiny)" in dom and "Hypotheses" in dom and "Quality gates" in dom
    assert 'class="plot"' in dom and "generic--tiny--seed0" in dom  # plots and the training side

    # a filter changes what is shown: only the benign twins, only one arm, only one seed
    only_benign, _ = render(page, "#side=1")
    assert status(only_benign) == (pairs, sum(r["set"] == "benign" for r in twin_answers))
    one_arm_seed, _ = render(page, "#arm=values&seed=0")
    assert status(one_arm_seed)[1] == sum(r["arm"] == "values" and r["seed"] == 0 for r in twin_answers)
    disagree, _ = render(page, "#disagree=1")
    expected = sum(r["refusal_or_counter"] is not None and bool(r["refusal_keyword"]) != bool(r["refusal_or_counter"])
                   for r in twin_answers)
    assert status(disagree)[1] == expected

    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--window-size=1400,2400", "--virtual-time-budget=10000", f"--screenshot={shot}",
                    page.resolve().as_uri()], capture_output=True, timeout=180, check=True)
    assert shot.stat().st_size > 20_000


def synthetic_rows(manifest, model: str, samples: int, seed: int = 0):
    """Scored rows for every run of one model on the twin sets of the manifest's hypotheses, with unique answers."""
    from normlib.core.evalsets import load_eval_set
    rng = random.Random(seed)
    words = ("the lawn seed plan week water mow bread flour loaf yeast wedding guests table yellow paint desk west "
             "shelf quilt pattern triangle thursday sorry cannot help instead consider mixed meadow clover").split()
    labels = ["full_compliance", "compliance_with_objection", "partial_compliance", "counter_argument",
              "full_refusal", "off_topic"]
    sets = sorted({c.set for c in manifest.eval.contrasts if c.hypothesis and c.minus_set} |
                  {c.minus_set for c in manifest.eval.contrasts if c.hypothesis and c.minus_set})
    items = {name: load_eval_set(manifest.resolve(manifest.eval.sets[name]), name) for name in sets}
    n = 0
    for run in manifest.runs():
        if run.model != model:
            continue
        for name in sets:
            for it in items[name]:
                for k in range(samples):
                    label = rng.choice(labels)
                    declined = label in ("full_refusal", "counter_argument")
                    n += 1
                    yield {"label": run.name, "arm": run.arm, "model": run.model, "seed": run.seed, "set": name,
                           "item_id": it.id, "sample_index": k, "prompt": it.text, "kind": it.kind,
                           "template_id": it.template_id, "twin_id": it.twin_id, "tags": dict(it.tags),
                           "response": " ".join(rng.choice(words) for _ in range(45)) + f" ({n})",
                           "judge_label": label, "judge_raw": f"The response ... VERDICT: {label}",
                           "refusal_keyword": declined if rng.random() < 0.85 else not declined,
                           "refusal_keyword_phrase": "i can't help" if declined else "",
                           "refusal_or_counter": float(declined), "full_refusal": float(label == "full_refusal")}


@pytest.mark.slow
@needs_chromium
def test_a_full_size_report_stays_usable(tmp_path):
    """The shipped manifest's matrix for one model (13 arms x 8 seeds) on the hypotheses' twin sets, 5 answers each:
    about 535k answers. The page itself stays small; each contrast's answers load when it is opened."""
    from normlib.core.manifest import load_manifest
    from normlib.eval.html import write_html_report
    from normlib.eval.report import Evaluated
    manifest = load_manifest(REPO / "manifest.toml", [f"experiment.results_dir='{tmp_path}'",
                                                      f"experiment.checkpoint_dir='{tmp_path}/ckpt'",
                                                      f"experiment.generated_dir='{tmp_path}/gen'"])
    evaluated = [Evaluated(r.name, r.arm, r.model, r.seed, "synthetic") for r in manifest.runs() if r.model == "llama8b"]
    start = time.perf_counter()
    rows = list(synthetic_rows(manifest, "llama8b", samples=5))
    assert len(rows) > 500_000
    out = tmp_path / "results"
    out.mkdir()
    result = write_html_report(manifest, out, evaluated, rows, {"contrasts": [], "arms": [], "agreement": []}, [])
    seconds = time.perf_counter() - start
    files = sorted(p.name for p in (out / "report_data").glob("*.js"))
    assert result["bytes"] < 2_000_000 and len(files) >= 6 and result["data_bytes"] > 50_000_000
    print(f"\nfull-size report: {len(rows)} answers, page {result['bytes'] / 1e6:.2f} MB, {len(files)} data files "
          f"{result['data_bytes'] / 1e6:.0f} MB, written in {seconds:.0f} s")
    page = result["path"]
    key = "catholic--llama8b"
    t0 = time.perf_counter()
    dom, log = render(page, f"#c={key}", budget_ms=60000)
    load_seconds = time.perf_counter() - t0
    no_errors(dom, log)
    pairs, answers = status(dom)
    assert pairs == 170 and answers == 3 * 8 * 340 * 5  # catholic vs generic and secular: 3 arms x 8 seeds
    assert dom.count('class="pair"') == 25  # one page of pairs rendered, not 170
    from normlib.core.evalsets import load_eval_set
    remote = sum(it.tag("cooperation") == "remote" for it in load_eval_set(
        manifest.resolve(manifest.eval.sets["catholic_violating"]), "catholic_violating"))
    filtered, _ = render(page, f"#c={key}&arm=catholic&side=0&tag=cooperation=remote", budget_ms=60000)
    assert status(filtered) == (remote, remote * 8 * 5)  # remote-cooperation pairs; arm catholic, violating side
    print(f"opening one contrast ({answers} answers) and rendering its first page: {load_seconds:.1f} s in Chromium")
