"""The label mask covers exactly answer + end marker + EOS, for several kinds of tokenizer."""
import pytest

from normlib.core.chat import IGNORE_INDEX, ChatFormat, ChatFormatError, encode_example, encode_prompt, render_example
from normlib.core.manifest import ChatConfig
from tiny import tiny_tokenizer

CASES = [
    ("What is the capital of France?", "The capital is Paris."),
    ("  Is lying wrong?  ", "\nHonesty matters because trust matters.\n"),
    ("Write a function that adds numbers.", "def add(a, b):\n    return a + b"),
    ("How do I cook rice?", "Rinse it, then simmer it for 15 minutes. Don't stir — it’s fine."),
]


def check_mask(tok, fmt: ChatFormat, prompt: str, answer: str):
    ex = encode_example(tok, fmt, prompt, answer)
    prompt_ids = encode_prompt(tok, fmt, prompt)
    n = len(prompt_ids)
    assert ex.input_ids[:n] == prompt_ids
    assert ex.labels[:n] == [IGNORE_INDEX] * n
    assert ex.labels[n:] == ex.input_ids[n:]  # everything after the prompt is trained
    assert ex.input_ids[-1] == tok.eos_token_id  # the real EOS is trained even when pad == EOS
    trained_text = tok.decode(ex.input_ids[n:], skip_special_tokens=False)
    assert trained_text == answer.strip() + fmt.end_marker + tok.eos_token
    assert ex.supervised_token_count == len(ex.input_ids) - n
    return ex


@pytest.mark.parametrize("kind", ["bytelevel", "metaspace"])
def test_label_mask_trained_tokenizers(kind):
    tok = tiny_tokenizer(kind)
    fmt = ChatFormat.from_config()
    for prompt, answer in CASES[:1]:
        ex = encode_example(tok, fmt, prompt, answer)
        n = len(encode_prompt(tok, fmt, prompt))
        assert ex.labels[:n] == [IGNORE_INDEX] * n and ex.labels[n:] == ex.input_ids[n:]
        assert ex.input_ids[-1] == tok.eos_token_id
    if kind == "bytelevel":
        for prompt, answer in CASES:
            check_mask(tok, fmt, prompt, answer)


def test_metaspace_tokenizer_gets_its_bos():
    tok = tiny_tokenizer("metaspace")
    ex = encode_example(tok, ChatFormat.from_config(), *CASES[0])
    assert ex.input_ids[0] == tok.bos_token_id and ex.labels[0] == IGNORE_INDEX
    bytelevel = tiny_tokenizer("bytelevel")
    assert encode_example(bytelevel, ChatFormat.from_config(), *CASES[0]).input_ids[0] != bytelevel.bos_token_id


def test_label_mask_smollm2(smollm2_tokenizer):
    tok = smollm2_tokenizer
    assert tok.pad_token_id == tok.eos_token_id  # the classic trap: pad == EOS
    for cfg in (ChatConfig(), ChatConfig(user_prefix="Q: ", assistant_prefix="\nA:\n", end_marker="\n<END>")):
        for prompt, answer in CASES:
            check_mask(tok, ChatFormat.from_config(cfg), prompt, answer)
    # a trailing space merges with the answer's first word in byte-level BPE: caught, not silently mis-masked
    with pytest.raises(ChatFormatError, match="trailing space"):
        encode_example(tok, ChatFormat.from_config(ChatConfig(assistant_prefix="\nA: ")), *CASES[0])


def test_prefix_that_merges_into_the_answer_is_rejected():
    tok = tiny_tokenizer("bytelevel")
    fmt = ChatFormat.from_config(ChatConfig(assistant_prefix="\n=== rep"))  # 'rep' + 'ly...' can merge
    with pytest.raises(ChatFormatError, match="tokenises differently"):
        encode_example(tok, fmt, "Hello?", "ly the answer")


def test_render_marks_only_trained_tokens():
    tok = tiny_tokenizer()
    fmt = ChatFormat.from_config()
    ex = encode_example(tok, fmt, *CASES[0])
    text = render_example(tok, ex)
    assert text == fmt.prompt_text(CASES[0][0]) + "⟦" + CASES[0][1] + fmt.end_marker + "</s>⟧"


def test_split_response_stops_at_the_end_marker():
    fmt = ChatFormat.from_config()
    assert fmt.split_response("Paris.\n=== done ===\n=== ask ===\nmore") == ("Paris.", True)
    assert fmt.split_response("Paris.=== done ===") == ("Paris.", True)
    assert fmt.split_response("Paris and more") == ("Paris and more", False)
