"""The plain chat template for base models, and tokenisation with answer-only labels.

Base models have no chat template, so normlib uses one plain, deliberately non-standard template
built from text the tokenizer already encodes (no new special tokens, whose embeddings would start
untrained):

    [BOS] <user_prefix><prompt><assistant_prefix><answer><end_marker>[EOS]

Labels come from explicit spans, never from "token != pad" (pad is often EOS): exactly the answer,
the end marker and EOS are trained; the prompt is -100. The prompt is tokenised on its own, and the
full text must start with exactly those tokens, so the prompt a model sees at generation time is
the one it was trained on.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from normlib.core.manifest import ChatConfig

IGNORE_INDEX = -100
CHAT_FILE = "normlib_chat.json"  # saved beside every exported checkpoint


class ChatFormatError(ValueError):
    pass


@dataclass(frozen=True)
class ChatFormat:
    """The template; built from the manifest's [chat] table, whose defaults are documented there."""
    user_prefix: str
    assistant_prefix: str
    end_marker: str
    add_eos: bool
    add_bos: str  # auto | yes | no

    @classmethod
    def from_config(cls, cfg=None) -> "ChatFormat":
        cfg = cfg if cfg is not None else ChatConfig()
        return cls(cfg.user_prefix, cfg.assistant_prefix, cfg.end_marker, cfg.add_eos, cfg.add_bos)

    def save(self, folder: Path) -> None:
        (Path(folder) / CHAT_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> "ChatFormat | None":
        path = Path(folder) / CHAT_FILE
        return cls(**json.loads(path.read_text())) if path.exists() else None

    def prompt_text(self, prompt: str) -> str:
        return f"{self.user_prefix}{prompt.strip()}{self.assistant_prefix}"

    def stop_strings(self) -> list[str]:
        """Strings at which generation stops: the end marker, and the marker without surrounding blanks."""
        return list(dict.fromkeys([self.end_marker, self.end_marker.strip()]))

    def split_response(self, generated: str) -> tuple[str, bool]:
        """Cut generated text at the end marker. Returns (answer, whether the marker was reached)."""
        marker = self.end_marker.strip()
        cut = generated.find(marker)
        if cut < 0:
            return generated.strip(), False
        return generated[:cut].strip(), True


@dataclass
class EncodedExample:
    input_ids: list[int]
    labels: list[int]

    @property
    def supervised_token_count(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE_INDEX)

    def __len__(self) -> int:
        return len(self.input_ids)


def bos_ids(tokenizer, fmt: ChatFormat) -> list[int]:
    bos = tokenizer.bos_token_id
    if fmt.add_bos == "no" or bos is None:
        return []
    if fmt.add_bos == "yes":
        return [bos]
    # auto: do what the tokenizer does by default when asked to add special tokens
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return [bos] if ids and ids[0] == bos else []


def encode_prompt(tokenizer, fmt: ChatFormat, prompt: str) -> list[int]:
    return bos_ids(tokenizer, fmt) + tokenizer(fmt.prompt_text(prompt), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, fmt: ChatFormat, prompt: str, answer: str) -> EncodedExample:
    prompt_ids = encode_prompt(tokenizer, fmt, prompt)
    full_text = fmt.prompt_text(prompt) + answer.strip() + fmt.end_marker
    full_ids = bos_ids(tokenizer, fmt) + tokenizer(full_text, add_special_tokens=False)["input_ids"]
    if full_ids[: len(prompt_ids)] != prompt_ids:
        raise ChatFormatError(
            "the prompt tokenises differently when the answer follows it, so the label mask would be wrong; "
            f"end [chat] assistant_prefix with a newline (a trailing space merges into the answer's first word). Prompt: {prompt[:80]!r}")
    if fmt.add_eos:
        if tokenizer.eos_token_id is None:
            raise ChatFormatError("[chat] add_eos is true but the tokenizer has no EOS token")
        full_ids.append(tokenizer.eos_token_id)
    n_prompt = len(prompt_ids)
    labels = [IGNORE_INDEX] * n_prompt + full_ids[n_prompt:]
    return EncodedExample(full_ids, labels)


def render_example(tokenizer, example: EncodedExample, color: bool = False) -> str:
    """The example's tokens, with trained tokens marked: ANSI green on a terminal, else ⟦...⟧."""
    out, trained_run = [], False
    for token_id, label in zip(example.input_ids, example.labels):
        trained = label != IGNORE_INDEX
        if trained != trained_run:
            if color:
                out.append("\x1b[42;30m" if trained else "\x1b[0m")
            else:
                out.append("⟦" if trained else "⟧")
            trained_run = trained
        out.append(tokenizer.decode([token_id], skip_special_tokens=False))
    if trained_run:
        out.append("\x1b[0m" if color else "⟧")
    return "".join(out)
