"""A Qwen-style tokenizer made in code, for the tiny pipelines of families whose text
encoder is a Qwen model (Qwen-Image's Qwen2.5-VL, Z-Image's Qwen3).

Word-level over farm's prompt words, with Qwen's chat tokens (`<|im_start|>`,
`<|im_end|>`, `<|endoftext|>` as padding) and a newline token, so that the pipelines'
prompt templates tokenize as the real tokenizer splits them where the pipelines count
tokens: Qwen-Image drops the first 34 tokens of its template (its system prompt) from
the text encoder's output."""

from __future__ import annotations

from typing import Any

from farm.tiny.identity import WORDS

PAD, START, END, UNKNOWN, NEWLINE = "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "\n"
# Words of the pipelines' templates (Qwen-Image's system prompt, the chat roles) and of
# the tests' prompts, besides farm's prompt words.
_EXTRA = ["system", "user", "assistant", "describe", "image", "detailing", "color", "shape",
          "size", "texture", "quantity", "text", "spatial", "relationships", "objects",
          "background", "house", "blurry", "is", "very", "detailed", "high", "best", "ugly",
          "bad"]  # fmt: skip
_PUNCTUATION = [",", ".", "(", ")", ":", "!", "?", "-", "'", '"', ";"]
# Qwen3's chat template, less its tools and multi-turn reasoning: a user turn, then the
# assistant's, with an empty thought when thinking is off (Z-Image asks for it on).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n"
    "{% endif %}{% endif %}"
)


def build_qwen_tokenizer(chat_template: str | None = None) -> Any:
    """The tokenizer: lower-cased words split on whitespace and punctuation, any other
    word <unk>; Qwen's special tokens and the newline kept whole; padding on the right
    with <|endoftext|>, as Qwen's tokenizers pad."""
    from tokenizers import AddedToken, Tokenizer, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    words = [PAD, START, END, UNKNOWN, "<think>", "</think>"]
    for word in [*WORDS, *_EXTRA, *_PUNCTUATION]:
        if word not in words:
            words.append(word)
    vocab = {word: i for i, word in enumerate(words)}
    vocab[NEWLINE] = len(vocab)
    tok = Tokenizer(WordLevel(vocab, unk_token=UNKNOWN))
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # Matched in the raw text before it is normalised and split: each stays one token.
    tok.add_special_tokens([AddedToken(t, normalized=False) for t in (PAD, START, END)])
    tok.add_tokens([AddedToken(t, normalized=False) for t in ("<think>", "</think>", NEWLINE)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD,
        eos_token=END,
        unk_token=UNKNOWN,
        model_max_length=32768,  # Qwen's; the pipelines pass their own max_length
        padding_side="right",
    )
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer
