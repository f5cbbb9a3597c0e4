"""XLMRobertaTokenizer parity with transformers' XLMRobertaTokenizer on small unigram SentencePiece models.

The models are trained here on tests/data/multilingual.txt (300 lines, > 40 languages and scripts, emoji,
full-width forms, combining marks, odd whitespace, typed special tokens). Observed: input_ids, attention_mask,
tokens and decoded text are identical to transformers 5.24 for every line, model and padding/truncation mode.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from altclip_np.tokenizer import XLMRobertaTokenizer

transformers = pytest.importorskip("transformers")
pytest.importorskip("google.protobuf")  # transformers reads the .model file with protobuf

DATA = Path(__file__).parent / "data" / "multilingual.txt"
# bytes, then split on "\n" only: the corpus holds \r, \x85, \u2028 and \u2029 inside lines on purpose
LINES = [line for line in DATA.read_bytes().decode("utf-8").split("\n") if line] + [""]
MODELS = {  # name -> trainer options
    "v2000": dict(vocab_size=2000, character_coverage=0.995),
    "v1200_unk": dict(vocab_size=1200, character_coverage=0.98),  # many characters left <unk>
    "v1500_nfkc": dict(vocab_size=1500, character_coverage=0.995, normalization_rule_name="nfkc"),
}
MODES = {  # name -> call options
    "plain": dict(),
    "longest": dict(padding=True),
    "longest_str": dict(padding="longest", truncation=True, max_length=12),
    "max_length": dict(padding="max_length", max_length=48, truncation=True),
    "max_length_no_trunc": dict(padding="max_length", max_length=200),
    "truncate_8": dict(truncation=True, max_length=8),
    "truncate_2": dict(truncation="longest_first", max_length=2),
    "no_mask": dict(padding=True, return_attention_mask=False),
}


def train_model(directory, **options):
    import sentencepiece as spm

    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(LINES), model_prefix=str(directory / "sp"),
                                   model_type="unigram", num_threads=2, minloglevel=2, **options)
    (directory / "sp.model").rename(directory / "sentencepiece.bpe.model")
    (directory / "sp.vocab").unlink()
    return directory


@pytest.fixture(scope="session", params=sorted(MODELS))
def model_dir(request, tmp_path_factory):
    return train_model(tmp_path_factory.mktemp(request.param), **MODELS[request.param])


@pytest.fixture(scope="session")
def pair(model_dir):
    return XLMRobertaTokenizer.from_pretrained(model_dir), transformers.XLMRobertaTokenizer.from_pretrained(model_dir)


def test_len_and_special_ids(pair):
    mine, ref = pair
    assert len(mine) == len(ref) == mine.sp.get_piece_size() + 2  # fairseq: sp ids + 1, <mask> last
    assert mine.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == \
        ref.convert_tokens_to_ids(["<s>", "<pad>", "</s>", "<unk>", "<mask>"]) == [0, 1, 2, 3, len(ref) - 1]


def test_every_line_alone(pair):
    mine, ref = pair
    for line in LINES:
        expected = ref(line)
        got = mine(line)
        assert got["input_ids"] == expected["input_ids"], repr(line)
        assert got["attention_mask"] == expected["attention_mask"], repr(line)
        assert mine.tokenize(line) == ref.tokenize(line), repr(line)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_batch_modes(pair, mode):
    mine, ref = pair
    options = MODES[mode]
    tensors = None if mode in ("plain", "truncate_8", "truncate_2") else "np"
    expected = ref(LINES, return_tensors=tensors, **options)
    got = mine(LINES, return_tensors=tensors, **options)
    assert sorted(got) == sorted(k for k in expected if k != "token_type_ids")
    for key in got:
        if tensors:
            assert got[key].dtype == np.int64 and got[key].shape == expected[key].shape
            np.testing.assert_array_equal(got[key], expected[key])
        else:
            assert got[key] == expected[key]


def test_texts_longer_than_max_length(pair):
    mine, ref = pair
    long_texts = [" ".join(LINES[:60]), "".join(LINES[70:90]), LINES[5] * 30]
    for max_length in (3, 17, 64):
        expected = ref(long_texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        got = mine(long_texts, truncation=True, max_length=max_length, padding=True, return_tensors="np")
        np.testing.assert_array_equal(got.input_ids, expected["input_ids"])
        assert got.input_ids.shape[1] == max_length and (got.input_ids[:, -1] == 2).all()  # </s> kept last


def test_decode(pair):
    mine, ref = pair
    ids = ref(LINES)["input_ids"]
    for skip in (False, True):
        assert mine.batch_decode(ids, skip_special_tokens=skip) == ref.batch_decode(ids, skip_special_tokens=skip)
    for row in ids[:40]:
        assert mine.convert_ids_to_tokens(row) == ref.convert_ids_to_tokens(row)
        assert mine.decode(np.array(row)) == ref.decode(row)
    assert mine.convert_ids_to_tokens(5) == ref.convert_ids_to_tokens(5)


def test_model_max_length_from_config(model_dir, tmp_path):
    """tokenizer_config.json's model_max_length (512 for BAAI/AltCLIP) is the default for truncation and padding."""
    shutil.copy(model_dir / "sentencepiece.bpe.model", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 512}))
    mine = XLMRobertaTokenizer.from_pretrained(tmp_path)
    ref = transformers.XLMRobertaTokenizer.from_pretrained(tmp_path)
    assert mine.model_max_length == ref.model_max_length == 512
    texts = [" ".join(LINES) * 2, LINES[0]]
    for options in (dict(truncation=True, padding=True), dict(padding="max_length", truncation=True)):
        got = mine(texts, return_tensors="np", **options)
        expected = ref(texts, return_tensors="np", **options)
        np.testing.assert_array_equal(got.input_ids, expected["input_ids"])
        np.testing.assert_array_equal(got.attention_mask, expected["attention_mask"])
    got, expected = mine(LINES[:3], padding="max_length"), ref(LINES[:3], padding="max_length")
    assert got["input_ids"] == expected["input_ids"] and len(got["input_ids"][0]) == 512


def test_mask_lstrip_and_round_trip(model_dir, tmp_path):
    """BAAI's config declares <mask> with lstrip=True; save_pretrained output loads in transformers too."""
    shutil.copy(model_dir / "sentencepiece.bpe.model", tmp_path)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"mask_token": {
        "content": "<mask>", "lstrip": True, "rstrip": False, "normalized": False, "single_word": False,
        "special": True, "__type": "AddedToken"}, "model_max_length": 512}))
    mine = XLMRobertaTokenizer.from_pretrained(tmp_path)
    saved = mine.save_pretrained(tmp_path / "saved")
    texts = ["a <mask> b", "x   <mask>y <mask>", "<mask>", "hello\t<mask> world </s> <s>"]
    for directory in (tmp_path, saved):
        ref = transformers.XLMRobertaTokenizer.from_pretrained(directory)
        assert mine(texts)["input_ids"] == ref(texts)["input_ids"]
        assert XLMRobertaTokenizer.from_pretrained(saved)(texts)["input_ids"] == ref(texts)["input_ids"]


def test_single_text_shapes(pair):
    mine, ref = pair
    assert mine("hello", return_tensors="np").input_ids.shape == (1, len(ref("hello")["input_ids"]))
    assert isinstance(mine("hello")["input_ids"][0], int)
    assert mine("")["input_ids"] == ref("")["input_ids"] == [0, 2]


def test_bad_input(pair, tmp_path):
    mine, _ = pair
    with pytest.raises(ValueError, match="empty list"):
        mine([])
    with pytest.raises(TypeError, match="list of strings"):
        mine(["ok", 3])
    with pytest.raises(TypeError, match="list of strings"):
        mine(None)
    with pytest.raises(ValueError, match="max_length"):
        mine(["a", "b"], padding="max_length")  # no model_max_length in a bare model directory
    with pytest.raises(ValueError, match="padding"):
        mine(["a", "b c d"], return_tensors="np")
    with pytest.raises(ValueError, match="padding must be"):
        mine("a", padding="left")
    with pytest.raises(ValueError, match="out of range"):
        mine.decode([len(mine)])
    with pytest.raises(OSError, match="sentencepiece.bpe.model"):
        XLMRobertaTokenizer.from_pretrained(tmp_path)


GRAPHEME_CASES = [
    "\u1100\u1161\u11a8", "\u1100\u1161\u11a8\u11a8", "\uac01\u11a8", "\uac00\u11a8\u1161", "\ua960\u1161\ud7cb",
    "\u1100\u1100\u1161\uac00", "\u11a8\u1100", "\ud7b0\ud7b0\ud7cb",  # Hangul jamo: L V T, LV + T, LVT + T ...
    "क्षि", "क्\u200dष", "क्\u200cष", "किं", "क्‍", "ক্ষ", "ক্ষা", "நீ", "க்ஷ", "ಕೀ", "ൽ്", "ශ්‍රී",  # viramas
    "กำ", "ำ", "น้ำ", "ເກົາ",  # Thai / Lao sara am (SpacingMark)
    "🇯🇵🇺🇸", "🇯🇵🇺", "🇫🇷🇩🇪🇮🇹🇪", "a🇯b",  # regional-indicator pairs and an odd one out
    "👨‍👩‍👧", "👨‍👩‍👧‍👦x", "👍🏽", "🏽", "1️⃣", "#️⃣", "❤️‍🔥", "🏳️‍🌈",  # ZWJ sequences, skin tone, keycaps
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # a tag sequence (Scotland)
    "a\u200d👩", "👩\u200d\u0301👩",  # ZWJ joins pictographs only
    "\r\n", "\r\r\n\n", "a\r\n\u0301", "\n\u0301", "\x85\u0301", "a\u2028b", "\t\u0301",  # CR LF, controls
    "e\u0301\u0302\u0323", "ά\u0308\u0345", "и\u0306\u0301", "\u0301abc",  # combining runs, a lone mark
    "\u200d", "\u200da", "\u200d\u200d👩",  # a lone ZWJ at the start
    "ｶﾞｷﾟ", "ﾞ", "\u0600١٢", "a\u06dd", "\u0600", "\u0600\r",  # half-width sound marks; Prepend
]


def test_graphemes_match_regex():
    """The UAX #29 segmentation gives regex's \\X (Unicode 17, the tables of tokenizers' unicode-segmentation)
    on the corpus, on tricky sequences and on ~40k strings around every code point with a grapheme-break
    property (compat_reference.unicode_cases), whatever Python's own unicodedata version."""
    regex = pytest.importorskip("regex")
    from altclip_np.graphemes import graphemes
    from compat_reference import unicode_cases

    lines = [line.decode("utf-8") for line in DATA.read_bytes().split(b"\n")]
    for text in lines + GRAPHEME_CASES + ["".join(GRAPHEME_CASES)] + unicode_cases():
        assert graphemes(text) == regex.findall(r"\X", text), ascii(text)


def test_charsmap_matches_sentencepiece_decompile(model_dir):
    """Our in-place trie lookup of the precompiled normalisation map gives, for every key sentencepiece's
    decompile() lists, the replacement of its shortest mapped prefix (tokenizers' `Precompiled` rule)."""
    import sentencepiece as spm

    from altclip_np.charsmap import CharsMap

    path = str(model_dir / "sentencepiece.bpe.model")
    table = dict(spm.SentencePieceNormalizer(model_file=path).decompile())
    charsmap = CharsMap(spm.SentencePieceProcessor(model_file=path).serialized_model_proto())
    shortest = lambda key: next((table[key[:k]] for k in range(1, len(key) + 1) if key[:k] in table), None)  # noqa
    assert len(table) > 1000
    assert all(charsmap.lookup(key) == shortest(key) for key in table)
    assert charsmap.lookup("a") is None and charsmap.lookup("") is None


def test_hostile_text_matches_transformers(pair):
    """Random hostile text (the fuzz target's generator: special-token strings, blank and control runs, marks,
    scripts, emoji, unknown characters, long repeats), 300 seeds per model: ids (whole and truncated) and
    tokens equal transformers'. This checks the lazy pipeline, the blank-run squeeze and the online search
    against an independent implementation. Observed: identical."""
    import random

    from fuzz_targets import Text
    mine, ref = pair
    for input_seed in range(300):
        text, max_length, _ = Text.generate(None, random.Random(input_seed))
        max_length = max(max_length, 2)  # below 2, transformers does not truncate at all (with a warning)
        text += " \t\u3000" * (input_seed % 7) * 50 + "x"  # long blank runs, which _squeeze shortens
        assert mine(text)["input_ids"] == ref(text)["input_ids"], (input_seed, text)
        assert mine(text, truncation=True, max_length=max_length)["input_ids"] == \
            ref(text, truncation=True, max_length=max_length)["input_ids"], (input_seed, text)
        assert mine.tokenize(text) == ref.tokenize(text), (input_seed, text)
