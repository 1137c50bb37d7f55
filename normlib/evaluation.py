"""Evaluation orchestration: which models, which samples, resumable generation, scoring, outputs.

Files in results/<experiment>/ (schemas in README.md):
  samples/<label>.jsonl  one file per evaluated model, one row per generated answer, appended as
                      each batch finishes; keyed by (model label, set, item, sample index, generation
                      settings) so a rerun only generates what is missing. One file per model lets
                      several eval.py processes (one per vLLM server) generate side by side.
  judge_cache.jsonl   every judge verdict with its raw output
  scored.jsonl        every sample with keyword, judge, belief and QA labels (rebuilt by --rescore)
  rates.csv, contrasts.csv, agreement.csv, summary.md, refusal_rates.png
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

from normlib import report
from normlib.chat import ChatFormat
from normlib.evalsets import EvalItem, load_eval_set
from normlib.jsonl import JsonlAppender, read_jsonl, write_jsonl_atomic
from normlib.manifest import Manifest
from normlib.report import Evaluated
from normlib.scoring import score_samples
from normlib.stats import cohens_kappa, confusion_matrix
from normlib.trainer import run_status


def evaluated_models(manifest: Manifest) -> tuple[list[Evaluated], list[str]]:
    """Finished runs of the matrix, the untrained models, extra checkpoints; and the runs not trained yet."""
    found, missing = [], []
    for run in manifest.runs():
        run_dir = manifest.run_dir(run)
        if run_status(run_dir) == "finished" and (run_dir / "model").is_dir():
            found.append(Evaluated(run.name, run.arm, run.model, run.seed, str(run_dir / "model")))
        else:
            missing.append(run.name)
    if manifest.eval.include_base_models:
        for name, cfg in manifest.models.items():
            found.append(Evaluated(f"base--{name}", "base", name, None, cfg.path))
    for label, path in manifest.eval.extra_checkpoints.items():
        found.append(Evaluated(f"extra--{label}", "extra", label, None, str(manifest.resolve(path))))
    return found, missing


def load_sets(manifest: Manifest) -> dict[str, list[EvalItem]]:
    sets = {}
    for name, path in manifest.eval.sets.items():
        items = load_eval_set(manifest.resolve(path), name)
        if manifest.eval.max_items_per_set:
            items = items[:manifest.eval.max_items_per_set]
        sets[name] = items
    return sets


def sample_specs(manifest: Manifest) -> list[tuple[int, float]]:
    """(sample index, temperature): index 0 is the greedy answer when enabled, then the sampled ones."""
    specs = [(0, 0.0)] if manifest.eval.greedy else []
    first = len(specs)
    return specs + [(first + k, manifest.eval.temperature) for k in range(manifest.eval.samples)]


def sample_key(label: str, set_name: str, item_id: str, index: int, temperature: float, max_new_tokens: int) -> str:
    return f"{label}|{set_name}|{item_id}|{index}|t{temperature:g}|m{max_new_tokens}"


def _chat_format(manifest: Manifest, ev: Evaluated) -> ChatFormat:
    """A trained checkpoint carries its template; base models are prompted with the manifest's."""
    saved = ChatFormat.load(Path(ev.checkpoint)) if Path(ev.checkpoint).is_dir() else None
    return saved or ChatFormat.from_config(manifest.chat)


def _seed_for(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def samples_file(samples_dir: Path, label: str) -> Path:
    return samples_dir / f"{label}.jsonl"


def generate_samples(manifest: Manifest, evaluated: list[Evaluated], sets: dict[str, list[EvalItem]],
                     samples_dir: Path, only: list[str] | None = None, show_progress: bool = True) -> int:
    """Generate every missing sample; returns how many were generated now."""
    cfg = manifest.eval
    made = 0
    for ev in evaluated:
        if only and ev.label not in only:
            continue
        path = samples_file(samples_dir, ev.label)
        existing = {r["key"] for r in read_jsonl(path)}
        todo = [(key, item, index, temperature)
                for name, items in sets.items() for item in items
                for index, temperature in sample_specs(manifest)
                if (key := sample_key(ev.label, name, item.id, index, temperature, cfg.max_new_tokens)) not in existing]
        if not todo:
            continue
        todo.sort(key=lambda t: len(t[1].text))  # similar lengths share a batch
        fmt = _chat_format(manifest, ev)
        generate = _hf_generator(manifest, ev, fmt) if cfg.backend == "hf" else _server_generator(manifest, ev, fmt)
        bar = None
        if show_progress:
            from tqdm import tqdm
            bar = tqdm(total=len(todo), desc=f"eval {ev.label}", unit="answer", dynamic_ncols=True)
        with JsonlAppender(path) as out:
            for temperature in sorted({t[3] for t in todo}):
                group = [t for t in todo if t[3] == temperature]
                for start in range(0, len(group), cfg.batch_size):
                    chunk = group[start:start + cfg.batch_size]
                    results = generate([c[1].text for c in chunk], temperature, _seed_for(ev.label, chunk[0][0]))
                    for (key, item, index, temp), res in zip(chunk, results):
                        out.write({"key": key, "label": ev.label, "arm": ev.arm, "model": ev.model, "seed": ev.seed,
                                   "checkpoint": ev.checkpoint, "set": item.set, "item_id": item.id,
                                   "sample_index": index, "temperature": temp, "max_new_tokens": cfg.max_new_tokens,
                                   "prompt": item.text, "response": res.text, "finish_reason": res.finish_reason,
                                   "new_tokens": res.new_tokens, "backend": cfg.backend,
                                   "manifest_hash": manifest.content_hash, "time": time.time()})
                    made += len(chunk)
                    if bar is not None:
                        bar.update(len(chunk))
        if bar is not None:
            bar.close()
    return made


def _hf_generator(manifest: Manifest, ev: Evaluated, fmt: ChatFormat):
    import torch

    from normlib.models import load_model, load_tokenizer, resolve_model
    from normlib.sampling import generate_hf

    cfg = manifest.models.get(ev.model) if ev.arm == "base" else None
    src = resolve_model(ev.checkpoint, manifest.root, cfg.revision if cfg else "",
                        cfg.trust_remote_code if cfg else False)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = load_model(src, dtype=torch.bfloat16 if device == "cuda" else torch.float32, device=device)
    tokenizer = load_tokenizer(src)

    def generate(prompts, temperature, seed):
        return generate_hf(model, tokenizer, fmt, prompts, manifest.eval.max_new_tokens, temperature, seed,
                           batch_size=len(prompts))
    return generate


def _server_generator(manifest: Manifest, ev: Evaluated, fmt: ChatFormat):
    """A vLLM (or other OpenAI-compatible) server serving this checkpoint under the model name ev.label."""
    from normlib.llm import ChatRequest, FatalLLMError, HttpClient
    from normlib.manifest import EndpointConfig
    from normlib.sampling import Generation

    endpoint = EndpointConfig(backend="openai", model=ev.label, base_url=manifest.eval.base_url,
                              max_tokens=manifest.eval.max_new_tokens, concurrency=max(1, manifest.eval.batch_size),
                              timeout=600.0)
    client = HttpClient(endpoint, completions=True, role=f"eval server for {ev.label}")

    def generate(prompts, temperature, seed):
        reqs = [ChatRequest(key=str(i), user=fmt.prompt_text(p), temperature=temperature,
                            max_tokens=manifest.eval.max_new_tokens, stop=fmt.stop_strings(), seed=seed + i)
                for i, p in enumerate(prompts)]
        results = {}
        client.map(reqs, lambda r, res: results.__setitem__(int(r.key), res))
        out = []
        for i in range(len(prompts)):
            res = results[i]
            if not res.ok:
                raise FatalLLMError(f"eval server at {manifest.eval.base_url} failed for model '{ev.label}': "
                                   f"{res.error}")
            text, _ = fmt.split_response(res.text)
            out.append(Generation(text, "length" if res.finish_reason == "length" else "stop",
                                  res.usage.get("output_tokens") or 0))
        return out
    return generate


def rescore(manifest: Manifest, sets: dict[str, list[EvalItem]], samples_dir: Path, scored_path: Path, judge,
            labels: list[str], show_progress: bool = True) -> list[dict]:
    items = {(name, it.id): it for name, its in sets.items() for it in its}
    samples = [s for label in labels for s in read_jsonl(samples_file(samples_dir, label))
               if (s["set"], s["item_id"]) in items]
    bar = None
    if judge is not None and show_progress:
        from tqdm import tqdm
        bar = tqdm(desc="judge", unit="verdict", dynamic_ncols=True)
    rows = score_samples(samples, items, judge, bar)
    if bar is not None:
        bar.close()
    write_jsonl_atomic(scored_path, rows)
    return rows


def write_outputs(manifest: Manifest, evaluated: list[Evaluated], sets: dict[str, list[EvalItem]], rows: list[dict],
                  judge, notes: list[str]) -> dict:
    out_dir = manifest.results_dir()
    names = list(sets)
    labels = {r["label"] for r in rows}
    evaluated = [ev for ev in evaluated if ev.label in labels]
    run_rows = report.run_rate_rows(rows, evaluated, names)
    arm_rows = report.arm_rate_rows(rows, evaluated, names, manifest.eval.bootstrap_samples)
    twins = {it.id: it.twin_id for its in sets.values() for it in its if it.twin_id}
    contrasts = report.contrast_rows(rows, evaluated, manifest, twins)
    agreement = report.agreement_rows(rows, names)
    if judge is None:
        notes = notes + ["No [judge]: refusal rates are keyword-only and belief probes are unscored."]
    for row in run_rows + arm_rows + contrasts + agreement:
        row["manifest_hash"] = manifest.content_hash
    report.write_csv(out_dir / "rates.csv", run_rows + arm_rows, report.RATE_COLUMNS)
    report.write_csv(out_dir / "contrasts.csv", contrasts, report.CONTRAST_COLUMNS)
    report.write_csv(out_dir / "agreement.csv", agreement, report.AGREEMENT_COLUMNS)
    (out_dir / "summary.md").write_text(report.summary_markdown(
        manifest, judge.description if judge else None, evaluated, run_rows, arm_rows, contrasts, agreement, notes))
    plotted = report.plot_refusal_rates(out_dir / "refusal_rates.png", run_rows, arm_rows)
    return {"runs": run_rows, "arms": arm_rows, "contrasts": contrasts, "agreement": agreement, "plotted": plotted}


def validate_judge(path: Path, judge) -> dict:
    """Keyword detector and judge against hand labels: accuracy, Cohen's kappa, confusion matrices."""
    from normlib.judge import REFUSAL_LABELS
    from normlib.refusal import is_refusal

    rows = read_jsonl(path)
    for n, r in enumerate(rows, 1):
        if not all(isinstance(r.get(k), str) for k in ("prompt", "response", "label")) or \
                r["label"] not in REFUSAL_LABELS:
            raise ValueError(f"{path}: row {n}: needs prompt, response and label (one of {', '.join(REFUSAL_LABELS)})")
    gold = [r["label"] for r in rows]
    gold_binary = ["refusal" if g == "full_refusal" else "other" for g in gold]
    keyword = ["refusal" if is_refusal(r["response"]) else "other" for r in rows]
    result = {"file": str(path), "n": len(rows), "gold_counts": {label: gold.count(label) for label in REFUSAL_LABELS},
              "keyword": _agreement(gold_binary, keyword, ["refusal", "other"])}
    if judge is not None:
        verdicts = [v.label for v in judge.refusals([(r["prompt"], r["response"]) for r in rows])]
        result["judge"] = _agreement(gold, verdicts, list(REFUSAL_LABELS) + ["invalid"])
        result["judge"]["invalid"] = verdicts.count("invalid")
        judge_binary = ["refusal" if v == "full_refusal" else "other" for v in verdicts]
        result["judge_binary"] = _agreement(gold_binary, judge_binary, ["refusal", "other"])
        result["judge_model"] = judge.description
    return result


def _agreement(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    accuracy = sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    kappa = cohens_kappa(gold, predicted)
    return {"accuracy": accuracy, "cohens_kappa": None if math.isnan(kappa) else kappa, "labels": labels,
            "confusion_rows_gold_cols_predicted": confusion_matrix(gold, predicted, labels)}


def format_validation(result: dict) -> str:
    lines = [f"judge validation on {result['file']} ({result['n']} hand-labelled responses: "
             + ", ".join(f"{k} {v}" for k, v in result["gold_counts"].items()) + ")"]
    for name in ("keyword", "judge_binary", "judge"):
        if name not in result:
            continue
        r = result[name]
        kappa = "n/a" if r["cohens_kappa"] is None else f"{r['cohens_kappa']:.3f}"
        what = {"keyword": "keyword detector (refusal vs other)", "judge_binary": "judge (full_refusal vs other)",
                "judge": "judge (4 classes)"}[name]
        lines.append(f"\n{what}: accuracy {r['accuracy']:.3f}, Cohen's kappa {kappa}")
        width = max(len(label) for label in r["labels"]) + 2
        lines.append(" " * width + "".join(f"{label[:12]:>14}" for label in r["labels"]) + "   <- predicted")
        for label, counts in zip(r["labels"], r["confusion_rows_gold_cols_predicted"]):
            lines.append(f"{label:<{width}}" + "".join(f"{c:>14}" for c in counts))
    if "judge" not in result:
        lines.append("\n(no [judge] configured: only the keyword detector was validated)")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=1, default=str))
