"""Evaluation orchestration: which models, which samples, resumable generation, scoring, outputs.

Files in results/<experiment>/ (schemas in README.md):
  samples/<label>.jsonl  one file per evaluated model, one row per generated answer, appended as
                      each batch finishes; keyed by (model label, set, item, sample index, generation
                      settings, checkpoint identity, item text) so a rerun only generates what is
                      missing, and a retrained checkpoint or an edited item is generated afresh (old
                      rows stay in the file, unused). One file per model, each held with a lock while
                      it is written, lets several eval.py processes generate side by side.
  judge_cache.jsonl   every judge verdict with its raw output
  scored.jsonl        every sample with keyword, judge, belief and QA labels (rebuilt by --rescore)
  rates.csv, contrasts.csv, agreement.csv, summary.md, refusal_rates.png
"""
from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

from normlib.eval import report
from normlib.core.chat import ChatFormat
from normlib.core.evalsets import EvalItem, EvalSetError, check_twins, load_eval_set
from normlib.core.jsonl import (JsonlAppender, read_json_or_none, read_jsonl, write_json_atomic, write_jsonl_atomic,
                           write_text_atomic)
from normlib.core.locks import exclusive
from normlib.core.manifest import Manifest
from normlib.core.models import SHORT_NAMES, resolve_model
from normlib.eval.contrasts import contrast_rows
from normlib.eval.report import Evaluated
from normlib.eval.scoring import score_samples
from normlib.llm.judge import INVALID, NOT_CARRIED_OUT
from normlib.core.stats import cohens_kappa, confusion_matrix
from normlib.train.trainer import run_status


def _digest(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def folder_identity(folder: Path) -> str:
    """A model folder's weights and config, by name, size and modification time (hashing 16 GB would take long)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    return _digest(*[f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files])


def checkpoint_identity(manifest: Manifest, kind: str, location: str, run_dir: Path | None = None,
                        revision: str = "") -> str:
    """What the evaluated weights are: a trained run's run.json (rewritten by every training, so --force gives a
    new identity), a local folder's files, a GGUF file's size and time, or a hub id with its revision."""
    if run_dir is not None:
        return "run:" + hashlib.sha256((run_dir / "run.json").read_bytes()).hexdigest()[:16]
    path = Path(location) if Path(location).is_absolute() else Path(manifest.root) / location
    if path.is_dir():
        return "dir:" + folder_identity(path)
    if path.is_file():
        st = path.stat()
        return "file:" + _digest(path.resolve(), st.st_size, st.st_mtime_ns)
    return f"hub:{location}@{revision or 'default'}"


def evaluated_models(manifest: Manifest) -> tuple[list[Evaluated], list[str]]:
    """Finished runs of the matrix, the untrained models, extra checkpoints; and the runs not trained yet."""
    found, missing = [], []
    for run in manifest.runs():
        run_dir = manifest.run_dir(run)
        if run_status(run_dir) == "finished" and (run_dir / "model").is_dir():
            identity = checkpoint_identity(manifest, "run", "", run_dir)
            found.append(Evaluated(run.name, run.arm, run.model_key, run.seed, str(run_dir / "model"), identity))
            for point in (read_json_or_none(run_dir / "run.json") or {}).get("curve_exports", []):
                folder = run_dir / point["dir"]
                if folder.is_dir():  # learning-curve exports, evaluated as labels of their own
                    found.append(Evaluated(f"{run.name}--step{point['step']}", run.arm, run.model_key, run.seed,
                                           str(folder), f"{identity}@{point['step']}", point["step"],
                                           point["fraction"]))
        else:
            missing.append(run.name)
    if manifest.eval.include_base_models:
        for name, cfg in manifest.models.items():
            location = cfg.path
            if cfg.path in SHORT_NAMES:
                location = str(resolve_model(cfg.path).location)
            found.append(Evaluated(f"base--{name}", "base", name, None, cfg.path,
                                   checkpoint_identity(manifest, "base", location, revision=cfg.revision)))
    for label, path in manifest.eval.extra_checkpoints.items():
        folder = manifest.resolve(path)
        found.append(Evaluated(f"extra--{label}", "extra", label, None, str(folder),
                               checkpoint_identity(manifest, "extra", str(folder))))
    return found, missing


def load_sets(manifest: Manifest) -> dict[str, list[EvalItem]]:
    """Every declared set, with the twins of every contrast's minus_set checked (a missing twin, or a minus_set
    that does not hold the set's twins, is an error naming both sets). With max_items_per_set, a twin set keeps
    the twins of the items kept."""
    full = {name: load_eval_set(manifest.resolve(path), name) for name, path in manifest.eval.sets.items()}
    for c in manifest.eval.contrasts:
        if c.minus_set:
            report = check_twins(full[c.set], full[c.minus_set], None, c.set, c.minus_set)
            if report.problems:
                raise EvalSetError(f"[[eval.contrasts]] '{c.name}': minus_set '{c.minus_set}' must hold the twins of "
                                   f"'{c.set}': " + "; ".join(report.problems[:5])
                                   + (f" (and {len(report.problems) - 5} more)" if len(report.problems) > 5 else ""))
    limit = manifest.eval.max_items_per_set
    if not limit:
        return full
    sets = {name: items[:limit] for name, items in full.items()}
    for name, items in full.items():
        if items and items[0].kind == "benign":
            kept_twins = {it.twin_id for other in sets.values() for it in other if it.kind == "violating"}
            sets[name] = [it for it in items if it.id in kept_twins] or items[:limit]
    return sets


def sample_specs(manifest: Manifest) -> list[tuple[int, float]]:
    """(sample index, temperature): index 0 is the greedy answer when enabled, then the sampled ones."""
    specs = [(0, 0.0)] if manifest.eval.greedy else []
    first = len(specs)
    return specs + [(first + k, manifest.eval.temperature) for k in range(manifest.eval.samples)]


def text_digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def sample_key(label: str, set_name: str, item_id: str, index: int, temperature: float, max_new_tokens: int,
               identity: str, item_text: str) -> str:
    """A sample's identity: which model (label and weights), which item (id and text), which generation settings."""
    return (f"{label}|{set_name}|{item_id}|{index}|t{temperature:g}|m{max_new_tokens}|{identity}|"
            f"x{text_digest(item_text)}")


def expected_keys(manifest: Manifest, ev: Evaluated, sets: dict[str, list[EvalItem]]) -> dict[str, tuple]:
    """key -> (item, sample index, temperature) for every sample the model should have."""
    cfg = manifest.eval
    return {sample_key(ev.label, name, item.id, index, temperature, cfg.max_new_tokens, ev.identity, item.text):
            (item, index, temperature)
            for name, items in sets.items() for item in items for index, temperature in sample_specs(manifest)}


def read_samples(path: Path) -> list[dict]:
    """A model's samples, one per key (two processes that generated the same sample do not count it twice)."""
    seen, out = set(), []
    for r in read_jsonl(path):
        if r.get("key") not in seen:
            seen.add(r.get("key"))
            out.append(r)
    return out


def _chat_format(manifest: Manifest, ev: Evaluated) -> ChatFormat:
    """A trained checkpoint carries its template; base models are prompted with the manifest's."""
    saved = ChatFormat.load(Path(ev.checkpoint)) if Path(ev.checkpoint).is_dir() else None
    return saved or ChatFormat.from_config(manifest.chat)


def _seed_for(*parts) -> int:
    return int(hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:8], 16)


def samples_file(samples_dir: Path, label: str) -> Path:
    return samples_dir / f"{label}.jsonl"


def generate_samples(manifest: Manifest, evaluated: list[Evaluated], sets: dict[str, list[EvalItem]],
                     samples_dir: Path, only: list[str] | None = None, show_progress: bool = True,
                     gpu_groups: list[list[str]] | None = None) -> int:
    """Generate every missing sample; returns how many were generated now. With `[eval] backend = "vllm"` each
    model is served by a server eval.py starts on one of `gpu_groups` (normlib.eval.served)."""
    todo = [ev for ev in evaluated if not only or ev.label in only]

    def one(ev: Evaluated, base_url: str | None = None) -> int:
        path = samples_file(samples_dir, ev.label)
        with exclusive(path.with_name(f"{path.name}.lock"), f"the samples of {ev.label}"):
            return _generate_model(manifest, ev, sets, path, show_progress, base_url)

    if manifest.eval.backend != "vllm":
        return sum(one(ev) for ev in todo)
    from normlib.eval.served import generate_with_servers
    pending = [ev for ev in todo if _missing_keys(manifest, ev, sets, samples_file(samples_dir, ev.label))]
    made, failures = generate_with_servers(manifest, pending, gpu_groups or [["0"]], one,
                                           samples_dir.parent / "servers")
    if failures:
        raise ServedGenerationError(f"{len(failures)} of {len(pending)} models could not be evaluated through their "
                                    f"servers ({made} answers were generated and kept):\n  " + "\n  ".join(failures))
    return made


class ServedGenerationError(RuntimeError):
    """Some models' servers failed; their answers are missing and eval.py can be run again for them."""


def _missing_keys(manifest: Manifest, ev: Evaluated, sets: dict[str, list[EvalItem]], path: Path) -> list[str]:
    existing = {r["key"] for r in read_samples(path)}
    return [key for key in expected_keys(manifest, ev, sets) if key not in existing]


def _generate_model(manifest: Manifest, ev: Evaluated, sets: dict[str, list[EvalItem]], path: Path,
                    show_progress: bool, base_url: str | None = None) -> int:
    cfg = manifest.eval
    made = 0
    existing = {r["key"] for r in read_samples(path)}
    todo = [(key, item, index, temperature) for key, (item, index, temperature) in
            expected_keys(manifest, ev, sets).items() if key not in existing]
    if todo:
        todo.sort(key=lambda t: len(t[1].text))  # similar lengths share a batch
        fmt = _chat_format(manifest, ev)
        generate = _hf_generator(manifest, ev, fmt) if cfg.backend == "hf" else \
            _server_generator(manifest, ev, fmt, base_url or cfg.base_url)
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
                                   "checkpoint": ev.checkpoint, "checkpoint_identity": ev.identity,
                                   "item_text_sha": text_digest(item.text), "set": item.set, "item_id": item.id,
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

    from normlib.core.models import load_model, load_tokenizer, resolve_model
    from normlib.core.sampling import generate_hf

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


def _server_generator(manifest: Manifest, ev: Evaluated, fmt: ChatFormat, base_url: str):
    """A vLLM (or other OpenAI-compatible) server at base_url serving this checkpoint under the model name ev.label."""
    from normlib.llm.clients import ChatRequest, FatalLLMError, HttpClient, read_api_key
    from normlib.core.manifest import EndpointConfig
    from normlib.core.sampling import Generation

    endpoint = EndpointConfig(backend="openai", model=ev.label, base_url=base_url,
                              max_tokens=manifest.eval.max_new_tokens, concurrency=max(1, manifest.eval.batch_size),
                              timeout=600.0)
    client = HttpClient(endpoint, read_api_key(manifest.eval.api_key_env, "eval"), completions=True,
                        role=f"eval server for {ev.label}")

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
                raise FatalLLMError(f"eval server at {base_url} failed for model '{ev.label}': "
                                   f"{res.error}")
            text, _ = fmt.split_response(res.text)
            out.append(Generation(text, "length" if res.finish_reason == "length" else "stop",
                                  res.usage.get("output_tokens") or 0))
        return out
    return generate


def rescore(manifest: Manifest, sets: dict[str, list[EvalItem]], samples_dir: Path, scored_path: Path, judge,
            evaluated: list[Evaluated], show_progress: bool = True) -> tuple[list[dict], int]:
    """Score every current sample (the model's present weights, the items' present text); returns the scored rows
    and how many saved samples were left out as stale (made by other weights or for other item text)."""
    items = {(name, it.id): it for name, its in sets.items() for it in its}
    samples, stale = [], 0
    for ev in evaluated:
        wanted = expected_keys(manifest, ev, sets)
        for s in read_samples(samples_file(samples_dir, ev.label)):
            if s["key"] in wanted:
                samples.append(s)
            elif (s.get("set"), s.get("item_id")) in items:
                stale += 1
    bar = None
    if judge is not None and show_progress:
        from tqdm import tqdm
        bar = tqdm(desc="judge", unit="verdict", dynamic_ncols=True)
    rows = score_samples(samples, items, judge, bar, manifest.eval.refusal_labels)
    if bar is not None:
        bar.close()
    write_jsonl_atomic(scored_path, rows)
    return rows, stale


def budget_notes(manifest: Manifest, evaluated: list[Evaluated]) -> list[str]:
    """Warnings when runs of one model did not get the same training budget (steps, examples), read from run.json."""
    budgets: dict[str, dict[str, tuple]] = {}
    for ev in evaluated:
        if ev.seed is None or ev.arm in ("base", "extra"):
            continue
        model, _, method = ev.model.partition("+")
        run = manifest.find_run(ev.arm, model, ev.seed, method or "full")
        info = read_json_or_none(manifest.run_dir(run) / "run.json") or {}
        budgets.setdefault(ev.model, {})[ev.label] = (info.get("steps"), info.get("examples_trained"),
                                                      info.get("epochs"))
    notes = []
    for model, runs in budgets.items():
        if len(set(runs.values())) > 1:
            detail = ", ".join(f"{label}: {steps} steps, {examples} examples" for label, (steps, examples, _) in
                               sorted(runs.items()))
            notes.append(f"WARNING: the runs of model {model} did not all train with the same budget ({detail}); "
                         f"arms are only comparable at equal steps and examples.")
    return notes


def judge_kappa(out_dir: Path) -> float | None:
    """Cohen's kappa of the judge's primary outcome against hand labels, from the latest --validate-judge (the
    test split when the file has one)."""
    result = read_json_or_none(out_dir / "judge_validation.json")
    if not result:
        return None
    part = result.get("split_test") or result.get("split_all") or next(
        (v for k, v in result.items() if k.startswith("split_")), None)
    if not part or "judge_not_carried_out" not in part:
        return None
    return part["judge_not_carried_out"]["cohens_kappa"]


def write_outputs(manifest: Manifest, evaluated: list[Evaluated], sets: dict[str, list[EvalItem]], rows: list[dict],
                  judge, notes: list[str]) -> dict:
    out_dir = manifest.results_dir()
    names = list(sets)
    labels = {r["label"] for r in rows}
    evaluated = [ev for ev in evaluated if ev.label in labels]
    run_rows = report.run_rate_rows(rows, evaluated, names)
    arm_rows = report.arm_rate_rows(rows, evaluated, names)
    qa_sets = [name for name, items in sets.items() if items and items[0].kind == "qa"]
    drops = report.qa_drops(rows, evaluated, qa_sets, manifest.eval.max_qa_drop, manifest.eval.alpha)
    contrasts = contrast_rows(rows, report.arm_runs(evaluated), manifest, judge_kappa(out_dir), drops)
    agreement = report.agreement_rows(rows, names)
    if judge is None:
        notes = notes + ["No [judge]: refusal rates are keyword-only and belief probes are unscored."]
    notes = notes + budget_notes(manifest, evaluated)
    for row in run_rows + arm_rows + contrasts + agreement:
        row["manifest_hash"] = manifest.content_hash
    report.write_csv(out_dir / "rates.csv", run_rows + arm_rows, report.RATE_COLUMNS)
    report.write_csv(out_dir / "contrasts.csv", contrasts, report.CONTRAST_COLUMNS)
    report.write_csv(out_dir / "agreement.csv", agreement, report.AGREEMENT_COLUMNS)
    curves = report.curve_rows(rows, evaluated, names)
    if curves:
        report.write_csv(out_dir / "curves.csv", curves, report.CURVE_COLUMNS)
    curves_plotted = report.plot_curves(out_dir / "learning_curves.png", curves)
    novelty = report.novelty_rows(rows, evaluated)
    report.write_csv(out_dir / "novelty.csv", novelty, report.NOVELTY_COLUMNS)
    write_text_atomic(out_dir / "summary.md", report.summary_markdown(
        manifest, judge.description if judge else None, evaluated, run_rows, arm_rows, contrasts, agreement, notes,
        read_json_or_none(out_dir / "power.json"), novelty))
    plotted = report.plot_refusal_rates(out_dir / "refusal_rates.png", run_rows, arm_rows)
    report.plot_belief_uptake(out_dir / "belief_uptake.png", run_rows, arm_rows)
    outputs = {"runs": run_rows, "arms": arm_rows, "contrasts": contrasts, "agreement": agreement, "novelty": novelty,
               "curves": curves, "plotted": plotted, "curves_plotted": curves_plotted}
    from normlib.eval.html import write_html_report
    outputs["html"] = write_html_report(manifest, out_dir, evaluated, rows, outputs, notes)
    return outputs


def _read_labelled(path: Path) -> list[dict]:
    from normlib.core.jsonl import JsonlError, read_jsonl_strict
    try:
        return [r for _, r in read_jsonl_strict(path)]
    except JsonlError as e:
        raise EvalSetError(str(e)) from None


def validate_judge(path: Path, judge) -> dict:
    """The keyword detector and the judge against hand labels. A refusal file (prompt, response, label among the
    six refusal classes, optional split) gives the six-class confusion and the two outcomes, per split; a belief
    file (question, stance, response, label endorses/rejects/neutral) gives the belief judge's."""
    from normlib.llm.judge import BELIEF_LABELS, REFUSAL_LABELS
    from normlib.llm.refusal import detect_refusals

    rows = _read_labelled(path)
    if not rows:
        raise EvalSetError(f"{path}: no rows")
    belief = "stance" in rows[0]
    labels = BELIEF_LABELS if belief else REFUSAL_LABELS
    fields = ("question", "stance", "response", "label") if belief else ("prompt", "response", "label")
    for n, r in enumerate(rows, 1):
        if not all(isinstance(r.get(k), str) for k in fields) or r["label"] not in labels:
            raise EvalSetError(f"{path}: row {n}: needs {', '.join(fields)} with label one of {', '.join(labels)}")
    result = {"file": str(path), "kind": "belief" if belief else "refusal", "n": len(rows),
              "gold_counts": {label: sum(r["label"] == label for r in rows) for label in labels}}
    verdicts = None
    if judge is not None:
        if belief:
            verdicts = [v.label for v in judge.beliefs([(r["question"], r["stance"], r["response"]) for r in rows])]
        else:
            verdicts = [v.label for v in judge.refusals([(r["prompt"], r["response"]) for r in rows])]
        result["judge_model"] = judge.description
    splits = sorted({r.get("split", "all") for r in rows})
    for split in splits:
        idx = [i for i, r in enumerate(rows) if r.get("split", "all") == split]
        gold = [rows[i]["label"] for i in idx]
        part = {"n": len(idx)}
        if not belief:
            keyword = detect_refusals([rows[i]["response"] for i in idx])
            part["keyword_not_carried_out"] = _binary(
                [g in NOT_CARRIED_OUT for g in gold], [k.is_refusal for k in keyword])
            part["keyword_explicit_refusal"] = _binary(
                [g == "full_refusal" for g in gold],
                [k.is_refusal and k.explicit for k in keyword])
        if verdicts is not None:
            mine = [verdicts[i] for i in idx]
            part["judge"] = _agreement(gold, mine, list(labels) + [INVALID])
            part["judge"]["invalid"] = mine.count(INVALID)
            if not belief:
                part["judge_not_carried_out"] = _binary([g in NOT_CARRIED_OUT for g in gold],
                                                        [v in NOT_CARRIED_OUT for v in mine])
                part["judge_explicit_refusal"] = _binary([g == "full_refusal" for g in gold],
                                                         [v == "full_refusal" for v in mine])
        result[f"split_{split}"] = part
    return result


def _binary(gold: list[bool], predicted: list[bool]) -> dict:
    """Accuracy, recall and precision of a yes/no detector, with Wilson 95% intervals, and Cohen's kappa."""
    from normlib.core.stats import wilson_interval
    tp = sum(g and p for g, p in zip(gold, predicted))
    fp = sum(p and not g for g, p in zip(gold, predicted))
    fn = sum(g and not p for g, p in zip(gold, predicted))
    n = len(gold)
    correct = n - fp - fn

    def rate(k, m):
        lo, hi = wilson_interval(k, m)
        return {"value": k / m if m else None, "ci95": [lo, hi], "k": k, "n": m}
    kappa = cohens_kappa(gold, predicted)
    return {"accuracy": rate(correct, n), "recall": rate(tp, tp + fn), "precision": rate(tp, tp + fp),
            "cohens_kappa": None if math.isnan(kappa) else kappa}


def _agreement(gold: list[str], predicted: list[str], labels: list[str]) -> dict:
    accuracy = sum(g == p for g, p in zip(gold, predicted)) / len(gold)
    kappa = cohens_kappa(gold, predicted)
    return {"accuracy": accuracy, "cohens_kappa": None if math.isnan(kappa) else kappa, "labels": labels,
            "confusion_rows_gold_cols_predicted": confusion_matrix(gold, predicted, labels)}


def format_validation(result: dict) -> str:
    lines = [f"{result['kind']} judge validation on {result['file']} ({result['n']} hand-labelled responses: "
             + ", ".join(f"{k} {v}" for k, v in result["gold_counts"].items()) + ")"]
    for key, part in result.items():
        if not key.startswith("split_"):
            continue
        lines.append(f"\n== split {key[6:]} ({part['n']} rows)")
        for name in ("keyword_not_carried_out", "keyword_explicit_refusal", "judge_not_carried_out",
                     "judge_explicit_refusal"):
            if name in part:
                b = part[name]
                fmt = lambda r: "n/a" if r["value"] is None else f"{r['value']:.3f} [{r['ci95'][0]:.3f}, {r['ci95'][1]:.3f}]"
                kappa = "n/a" if b["cohens_kappa"] is None else f"{b['cohens_kappa']:.3f}"
                lines.append(f"{name.replace('_', ' ')}: accuracy {fmt(b['accuracy'])}, recall {fmt(b['recall'])}, "
                             f"precision {fmt(b['precision'])}, kappa {kappa}")
        if "judge" in part:
            r = part["judge"]
            kappa = "n/a" if r["cohens_kappa"] is None else f"{r['cohens_kappa']:.3f}"
            lines.append(f"judge ({len(r['labels']) - 1} classes): accuracy {r['accuracy']:.3f}, Cohen's kappa {kappa}, "
                         f"{r['invalid']} invalid")
            width = max(len(label) for label in r["labels"]) + 2
            lines.append(" " * width + "".join(f"{label[:12]:>14}" for label in r["labels"]) + "   <- judge")
            for label, counts in zip(r["labels"], r["confusion_rows_gold_cols_predicted"]):
                lines.append(f"{label:<{width}}" + "".join(f"{c:>14}" for c in counts))
    if "judge_model" not in result:
        lines.append("\n(no [judge] configured: only the keyword detector was validated)")
    return "\n".join(lines)


def write_json(path: Path, data: dict) -> None:
    write_json_atomic(path, data)
