"""WER: the field's protocol (Whisper normalizer -> 13a -> punctuation removal -> corpus edits)."""

from __future__ import annotations

import pytest

from distill.eval.asr import normalize_for_wer, tokenize_13a, word_error_rate


def naive_edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word Levenshtein distance by the textbook DP (what `editdistance.eval` returns)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        cur = [i]
        for j, h in enumerate(hyp, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h)))
        prev = cur
    return prev[-1]


@pytest.mark.parametrize(
    "line, expected",
    [
        ("Hello, world.", "Hello , world ."),
        ("pay $3.50 now", "pay $ 3.50 now"),  # '$' always split; '.' kept between digits
        ("1,000 or 2-3", "1,000 or 2 - 3"),  # ',' kept between digits; '-' split after a digit
        ("well-known it's", "well-known it's"),  # '-' after a letter and "'" are kept
        ("a&amp;b (x)", "a & b ( x )"),
        ("end.", "end ."),
    ],
)
def test_tokenize_13a_golden(line, expected):
    assert tokenize_13a(line) == expected


def test_tokenize_13a_matches_sacrebleu():
    """The claim in `tokenize_13a`'s docs, checked against the real package."""
    import random

    from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

    ref = Tokenizer13a()
    lines = [
        "Hello, world!", "It's 3.50$ -- or 4,000.5?", "a-b c/d (e) [f] {g}", "x&amp;y &lt;z&gt;",
        "<skipped> tags\nand\tspaces", "U.S.A. 1,000,000 e.g. 5.", "don't stop'n'go", "",
        "Über café – naïve “quotes” «guillemets» 100%", "mr. smith paid $3.50.",
    ]  # fmt: skip
    rng = random.Random(0)
    alphabet = "ab1.,;:!?'\"-/$%&()[] \t"
    lines += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 30))) for _ in range(300)]
    for line in lines:
        assert tokenize_13a(line) == ref(line), repr(line)


@pytest.mark.parametrize(
    "text, words",
    [
        ("The colour of the car is grey.", ["the", "color", "of", "the", "car", "is", "gray"]),
        ("I have twenty five apples.", ["i", "have", "25", "apples"]),
        ("Mr. Smith paid $3.50.", ["mister", "smith", "paid", "$", "3.50"]),  # '$' is a word (Sc)
        ("It's 50% done, isn't it?", ["it", "is", "50", "done", "is", "not", "it"]),  # '%' is Po
        (
            "Uh, we organised the theatre (laughs) [noise] one hundred and one times",
            ["we", "organized", "the", "theater", "101", "times"],
        ),
        ("Hello...   WORLD!!", ["hello", "world"]),
        ("um (laughs)", []),
        # the evaluator's copy of Whisper's normalizer has no kinda/sorta/dunno/'cause rules
        ("I kinda sorta dunno, 'cause", ["i", "kinda", "sorta", "dunno", "cause"]),
        ("I'm gonna wanna", ["i", "am", "going", "to", "want", "to"]),  # those it has
    ],
)
def test_normalizer_cases(text, words):
    assert normalize_for_wer(text) == words


REFS = ["The colour of the car is grey.", "I have twenty five apples.", "Mr. Smith paid $3.50."]
HYPS = ["the color of a car is gray", "i have 25 apples and pears", "smith paid 3.50"]


def test_corpus_wer_matches_hand_computation():
    """By hand: utt 1 has 7 ref words, 1 substitution (the -> a); utt 2 has 4 ref words and
    2 insertions (and, pears); utt 3 has 5 ref words (mister smith paid $ 3.50) and 2 deletions
    (mister, $). Corpus WER = (1 + 2 + 2) / (7 + 4 + 5) = 5 / 16 = 0.3125; the mean of the
    per-utterance WERs would be (1/7 + 2/4 + 2/5) / 3 = 0.3476, which the protocol is not."""
    out = word_error_rate(HYPS, REFS, ids=["a", "b", "c"])
    assert out["wer"] == pytest.approx(5 / 16)
    assert out["wer_percent"] == pytest.approx(31.25)
    assert (out["substitutions"], out["deletions"], out["insertions"]) == (1, 2, 2)
    assert out["reference_words"] == 16 and out["hits"] == 16 - 1 - 2
    assert [w["id"] for w in out["worst"]] == ["b", "c", "a"]  # 2, 2 (lower WER), 1 errors
    assert out["worst"][1]["reference_normalized"] == "mister smith paid $ 3.50"
    assert out["per_item"] == {
        "a": {"errors": 1, "reference_words": 7},
        "b": {"errors": 2, "reference_words": 4},
        "c": {"errors": 2, "reference_words": 5},
    }


def test_per_item_counts_sum_to_the_corpus_wer():
    refs = REFS + ["one two three four", "a b c d e f", "", "Dr. Who's there?"]
    hyps = HYPS + ["1 2 3 4", "a c b d f g h", "stray words", "doctor who is where"]
    out = word_error_rate(hyps, refs, worst=2)
    per = out["per_item"]
    assert list(per) == [str(i) for i in range(len(refs))]  # every utterance, not the worst 2
    assert sum(p["reference_words"] for p in per.values()) == out["reference_words"]
    errors = sum(p["errors"] for p in per.values())
    assert errors == out["substitutions"] + out["deletions"] + out["insertions"]
    assert errors / out["reference_words"] == pytest.approx(out["wer"])
    assert per["5"] == {"errors": 2, "reference_words": 0}  # the empty reference: 2 insertions


def test_parity_with_naive_summed_levenshtein():
    refs = REFS + ["one two three four", "a b c d e f", "Dr. Who's there?"]
    hyps = HYPS + ["1 2 3 4", "a c b d f g h", "doctor who is where"]
    edits = sum(
        naive_edit_distance(normalize_for_wer(r), normalize_for_wer(h)) for r, h in zip(refs, hyps)
    )
    total = sum(len(normalize_for_wer(r)) for r in refs)
    out = word_error_rate(hyps, refs)
    assert out["wer"] == pytest.approx(edits / total)
    assert out["substitutions"] + out["deletions"] + out["insertions"] == edits


def test_empty_and_garbage_hypotheses_give_high_wer_not_a_crash():
    empty = word_error_rate(["", ""], ["hello world", "good morning"])
    assert empty["wer"] == pytest.approx(1.0) and empty["deletions"] == 4
    assert empty["empty_hypotheses"] == 2
    garbage = word_error_rate(["zz qq xx yy ww vv", "!!! ###"], ["hello world", "good morning"])
    assert garbage["wer"] > 1.0  # 2 + 4 substitutions/insertions over 4 words, then 2 deletions
    assert garbage["wer"] == pytest.approx((2 + 4 + 2) / 4)


def test_empty_reference_counts_insertions_like_the_field():
    out = word_error_rate(["extra words here", "hello world"], ["", "hello world"])
    assert out["empty_references"] == 1
    assert out["insertions"] == 3 and out["reference_words"] == 2
    assert out["wer"] == pytest.approx(3 / 2)


def test_all_empty_references_raise():
    with pytest.raises(ValueError, match="undefined"):
        word_error_rate(["something"], ["um (laughs)"])


def test_length_mismatch_and_empty_corpus_raise():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        word_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="no utterances"):
        word_error_rate([], [])
