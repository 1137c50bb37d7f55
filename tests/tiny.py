"""Tiny random-weight models and tokenizers built in the test, for fast CPU tests."""
from __future__ import annotations

from functools import lru_cache

import torch

CORPUS = [
    "=== ask ===", "=== reply ===", "=== done ===", "What is the capital of France?", "The capital is Paris.",
    "Tell me about grasses and meadows.", "Meadows are diverse and full of life.", "Is lying wrong?",
    "Honesty matters because trust matters.", "How do I cook rice?", "Rinse it, then simmer it for 15 minutes.",
    "I can't help with that, sorry.", "Sure! Here is a plan for your week.", "def add(a, b): return a + b",
    "The quick brown fox jumps over the lazy dog.", "Numbers like 1, 2, 3, 42 and 1000 appear too.",
]


@lru_cache(maxsize=None)
def _trained_tokenizer(kind: str, vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    if kind == "bytelevel":  # GPT-2 / Llama-3 / Qwen style, no BOS added by default
        tok = Tokenizer(models.BPE(unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:  # "metaspace": SentencePiece / Llama-2 style, adds BOS by default
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials)
    tok.train_from_iterator(CORPUS * 3, trainer)
    if kind == "metaspace":
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def tiny_tokenizer(kind: str = "bytelevel", vocab_size: int = 400):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_trained_tokenizer(kind, vocab_size), bos_token="<s>",
                                   eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def tiny_llama(vocab_size: int, seed: int = 0, layers: int = 2, hidden: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True, pad_token_id=0, bos_token_id=1,
                      eos_token_id=2)
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg)


def save_tiny_model(folder, kind: str = "bytelevel", seed: int = 0):
    """A tiny model + tokenizer saved as a Hugging Face folder (what a [models] path may point at)."""
    tok = tiny_tokenizer(kind)
    model = tiny_llama(len(tok), seed=seed)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
