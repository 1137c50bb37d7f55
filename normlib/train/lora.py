"""LoRA as a training method ([train] method = "lora"), through peft.

The adapters are injected into the transformers model in place (peft.inject_adapter_in_model), so
the model keeps its own structure: normlib's loss, budgets, resume and export work unchanged, and
only the adapter weights require gradients (the base weights stay exactly as loaded). The export is a
plain merged Hugging Face folder that transformers and vLLM load: each adapted weight is written as
W + scaling * B @ A under its original name, computed without touching the model being trained (an
export in the middle of training, for a learning curve, leaves training as it was).
"""
from __future__ import annotations

import torch

ADAPTER_NAME = "default"


def apply_lora(hf_model, rank: int, alpha: float, dropout: float, target_modules: list[str]):
    """Inject LoRA adapters into hf_model in place and freeze everything else. Returns the model."""
    from peft import LoraConfig, inject_adapter_in_model

    targets = target_modules[0] if target_modules == ["all-linear"] else list(target_modules)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none",
                        task_type="CAUSAL_LM")
    if targets == "all-linear":
        # peft resolves "all-linear" only through get_peft_model; name the linear layers of the decoder ourselves
        head = hf_model.get_output_embeddings()
        config.target_modules = sorted({name.split(".")[-1] for name, m in hf_model.named_modules()
                                        if isinstance(m, torch.nn.Linear) and m is not head})
    inject_adapter_in_model(config, hf_model, adapter_name=ADAPTER_NAME)
    for name, param in hf_model.named_parameters():
        param.requires_grad = "lora_" in name
    return hf_model


def is_lora(hf_model) -> bool:
    return any("lora_" in name for name, _ in hf_model.named_parameters())


def merged_state_dict(hf_model, state_dict: dict | None = None) -> dict:
    """The model's weights under their original names, each adapted weight merged (W + scaling * B @ A).
    `state_dict`: a full state dict gathered elsewhere (FSDP); by default the model's own."""
    from peft.tuners.lora import LoraLayer

    source = state_dict if state_dict is not None else hf_model.state_dict()
    deltas = {}
    for name, module in hf_model.named_modules():
        if isinstance(module, LoraLayer) and ADAPTER_NAME in module.lora_A:
            with torch.no_grad():
                deltas[f"{name}.base_layer.weight"] = module.get_delta_weight(ADAPTER_NAME).detach().to("cpu")
    out = {}
    for key, tensor in source.items():
        if "lora_" in key:
            continue
        value = tensor
        if key in deltas:
            value = tensor.detach().to("cpu", torch.float32) + deltas[key].to(torch.float32)
        out[key.replace(".base_layer.", ".")] = value
    return out
