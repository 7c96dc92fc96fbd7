"""The tiny offline family's tokenizer: every integer 0..N is one token.

A WordPiece model over a closed vocabulary: whole words (numbers 0..N, the
words of every task template and of the pre-training corpus, punctuation) and
the ten continuation digits ``##0``..``##9``, so a number above N still
tokenizes (as several pieces) instead of collapsing to ``[UNK]``; the
single-token answer check then drops it honestly.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[BOS]", "[EOS]")
PUNCTUATION = tuple("()[],.:;=+-*/?!")

# Words of the tasks' surface forms (paper.md), kept apart from the rest so the
# vocabulary is easy to audit.
TEMPLATE_WORDS = (
    "Calculate the result of following arithmetic expression and provide only "
    "final answer Derive sequence least common multiple LCM two numbers There "
    "is a function y x Given"
).split()

# Words of the pre-training surface form (no symbols: see models/tiny_corpus.py).
CORPUS_WORDS = "plus minus times over is then lcm and of".split()

# Generic filler words for pre-training contexts.
FILLER_WORDS = (
    "we you they he she it this that these those here there now then today "
    "please note let us see find compute give tell show write read say think "
    "know want need take make get put keep start stop look check list number "
    "value total count item order line page book table row data problem step "
    "question task test example case rule fact idea word name set group part "
    "first last next new old big small good same other every each some many "
    "few more most less all any one with from into for to in on at by about "
    "as or but if so because when while after before what which who how why "
    "can will would should must may might do does did has have had was were "
    "be been being are am not no yes very just also again still ever never "
    "simple quick careful correct exact short long true false right left up "
    "down below above between under Please Note Let We You The This What "
    "Find Compute Give Tell Show Write Read Here Now Then Answer Result"
).split()


def tiny_vocabulary(max_number: int) -> list[str]:
    """Return the ordered vocabulary: specials, numbers 0..max_number, pieces, words."""
    vocab: list[str] = list(SPECIAL_TOKENS)
    vocab += [str(n) for n in range(max_number + 1)]
    vocab += [f"##{d}" for d in range(10)]
    vocab += list(PUNCTUATION)
    seen = set(vocab)
    for word in (*TEMPLATE_WORDS, *CORPUS_WORDS, *FILLER_WORDS):
        if word not in seen:
            vocab.append(word)
            seen.add(word)
    return vocab


def build_tiny_tokenizer(max_number: int = 1000) -> PreTrainedTokenizerFast:
    """Build the word-level tokenizer as a normal Hugging Face fast tokenizer."""
    vocab = {token: index for index, token in enumerate(tiny_vocabulary(max_number))}
    model = models.WordPiece(vocab=vocab, unk_token="[UNK]", max_input_chars_per_word=32)
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            pre_tokenizers.Punctuation(behavior="isolated"),
            pre_tokenizers.Digits(individual_digits=False),
        ]
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    bos = vocab["[BOS]"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[BOS] $A", special_tokens=[("[BOS]", bos)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        bos_token="[BOS]",
        eos_token="[EOS]",
        model_max_length=256,
    )
    fast.init_kwargs["max_number"] = max_number
    return fast
