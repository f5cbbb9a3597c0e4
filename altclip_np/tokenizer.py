"""XLM-RoBERTa tokenizer on the `sentencepiece` library, in parity with transformers' `XLMRobertaTokenizer`.

transformers 5 builds this tokenizer from `sentencepiece.bpe.model` as a `tokenizers` pipeline, and that is what
is mirrored here (not plain `SentencePieceProcessor.encode`, which differs on a few inputs):

1. special-token strings typed in the text are cut out first and kept whole;
2. every other span is normalized with the model's character map (SentencePiece's normalizer, with its whitespace
   options off), split on Unicode whitespace, each word gets a "▁" prefix and is split again before every "▁";
3. each piece is segmented by a unigram Viterbi search over the fairseq vocabulary (which includes the special
   tokens, so a full-width "＜ｓ＞" that normalizes to "<s>" becomes id 0, as in transformers);
4. `<s> ... </s>` go around the result.

Ids follow fairseq: <s>=0, <pad>=1, </s>=2, <unk>=3, SentencePiece piece i -> i + 1, <mask> last.
"""
import json
import re
import shutil
import unicodedata
from pathlib import Path

import numpy as np
import sentencepiece as spm

VOCAB_FILE = "sentencepiece.bpe.model"
CONFIG_FILE = "tokenizer_config.json"
# transformers' VERY_LARGE_INTEGER: "no maximum length" when tokenizer_config.json does not give one
NO_MAX_LENGTH = int(1e30)
UNK_PENALTY = 10.0  # unknown characters score min_score - 10, as in SentencePiece and tokenizers
# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' WhitespaceSplit uses; str.split() differs
_WHITESPACE = re.compile("[\t-\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+")
_SPACE_MARK = "\u2581"
_BEFORE_SPACE_MARK = re.compile("(?=\u2581)")


class BatchEncoding(dict):
    """A dict of model inputs whose keys can also be read as attributes (`enc.input_ids`)."""

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class XLMRobertaTokenizer:
    """Turns text into XLM-R input ids exactly as transformers' `XLMRobertaTokenizer` does."""

    def __init__(self, vocab_file, model_max_length=NO_MAX_LENGTH, mask_lstrip=False,
                 clean_up_tokenization_spaces=False, config=None):
        self.vocab_file = str(vocab_file)
        self.sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
        # the model's precompiled character map as {source: replacement}
        self.charmap = dict(spm.SentencePieceNormalizer(model_file=self.vocab_file).decompile())
        self.model_max_length = int(model_max_length)
        self.mask_lstrip = bool(mask_lstrip)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.config = dict(config or {})
        self._build_vocab()

    def _build_vocab(self):
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        pieces = [self.sp.id_to_piece(i) for i in range(3, self.sp.get_piece_size())]
        scores = [0.0] * 4 + [self.sp.get_score(i) for i in range(3, self.sp.get_piece_size())] + [0.0]
        self.id_to_token = specials + pieces + ["<mask>"]
        self.token_to_id = {}
        for i, tok in enumerate(self.id_to_token):
            self.token_to_id[tok] = i  # a later duplicate wins, as in tokenizers' Unigram
        self.scores = scores
        self.unk_score = min(scores) - UNK_PENALTY
        self.max_piece_len = max(len(t) for t in self.id_to_token)
        self.bos_token_id, self.pad_token_id, self.eos_token_id, self.unk_token_id = 0, 1, 2, 3
        self.mask_token_id = len(self.id_to_token) - 1
        self.special_ids = {0, 1, 2, 3, self.mask_token_id}
        # longest first, so that the alternation behaves like leftmost-longest matching
        names = sorted(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], key=len, reverse=True)
        alternatives = [(r"\s*" if n == "<mask>" and self.mask_lstrip else "") + re.escape(n) for n in names]
        self._special_re = re.compile("(" + "|".join(alternatives) + ")")

    # ---- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        """Load from a directory (or Hub id) holding `sentencepiece.bpe.model` and optional `tokenizer_config.json`."""
        from .hub import resolve_pretrained

        root = resolve_pretrained(name_or_path, [VOCAB_FILE, CONFIG_FILE, "*.json"], revision=revision,
                                  cache_dir=cache_dir, local_files_only=local_files_only)
        root = Path(root)
        vocab_file = root / VOCAB_FILE
        if not vocab_file.is_file():
            raise OSError(f"{name_or_path}: expected a SentencePiece model file {VOCAB_FILE!r} in {root}")
        config = {}
        if (root / CONFIG_FILE).is_file():
            config = json.loads((root / CONFIG_FILE).read_text(encoding="utf-8"))
        mask = config.get("mask_token")
        options = {
            "model_max_length": config.get("model_max_length") or NO_MAX_LENGTH,
            "mask_lstrip": isinstance(mask, dict) and bool(mask.get("lstrip")),
            "clean_up_tokenization_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
        }
        options.update(kwargs)
        return cls(vocab_file, config=config, **options)

    def save_pretrained(self, save_directory):
        """Write `sentencepiece.bpe.model` and `tokenizer_config.json` so that both this class and transformers load them."""
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        if Path(self.vocab_file).resolve() != (out / VOCAB_FILE).resolve():
            shutil.copyfile(self.vocab_file, out / VOCAB_FILE)
        config = dict(self.config)
        config.update({
            "tokenizer_class": "XLMRobertaTokenizer",
            "bos_token": "<s>", "eos_token": "</s>", "sep_token": "</s>", "cls_token": "<s>",
            "unk_token": "<unk>", "pad_token": "<pad>",
            "mask_token": {"content": "<mask>", "lstrip": self.mask_lstrip, "rstrip": False,
                           "normalized": False, "single_word": False, "special": True, "__type": "AddedToken"},
            "clean_up_tokenization_spaces": self.clean_up_tokenization_spaces,
        })
        if self.model_max_length < NO_MAX_LENGTH:
            config["model_max_length"] = self.model_max_length
        (out / CONFIG_FILE).write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return out

    def __len__(self):
        return len(self.id_to_token)

    @property
    def vocab_size(self):
        return len(self.id_to_token)

    # ---- encoding -----------------------------------------------------------------------------------------

    def tokenize(self, text):
        """The tokens of `text` without `<s>`/`</s>`; an unknown run shows its own text, as in transformers."""
        return [piece for _, piece in self._encode(text)]

    def _encode_ids(self, text):
        return [i for i, _ in self._encode(text)]

    def _encode(self, text):
        """(id, surface piece) pairs."""
        pairs = []
        for k, part in enumerate(self._special_re.split(text)):
            if k % 2:  # the capture group: a special token typed in the text
                pairs.append((self.token_to_id[part.lstrip()], part.lstrip()))
            elif part:
                pairs.extend(self._encode_span(part))
        return pairs

    def _encode_span(self, span):
        pairs = []
        for word in _WHITESPACE.split(self.normalize(span)):
            if not word:
                continue
            if not word.startswith(_SPACE_MARK):
                word = _SPACE_MARK + word
            # Metaspace splits before every "▁", keeping it on the following piece
            for piece in _BEFORE_SPACE_MARK.split(word):
                if piece:
                    pairs.extend(self._viterbi(piece))
        return pairs

    def normalize(self, text):
        """tokenizers' `Precompiled` normalizer, which differs from SentencePiece's own on combining sequences.

        A grapheme shorter than 6 UTF-8 bytes is replaced as a whole by the mapping of its *shortest* mapped
        prefix (so "Ａ\u0301" becomes "A"); longer graphemes, and those with no mapped prefix, map char by char.
        """
        charmap, out = self.charmap, []
        for g in _graphemes(text):
            if len(g) > 1 and len(g.encode("utf-8")) < 6:
                mapped = next((charmap[g[:k]] for k in range(1, len(g) + 1) if g[:k] in charmap), None)
                if mapped is not None:
                    out.append(mapped)
                    continue
            out.extend(charmap.get(c, c) for c in g)
        return "".join(out)

    def _viterbi(self, text):
        """Best unigram segmentation; ties go to the earliest start, unknown runs fuse into one <unk>."""
        n = len(text)
        best = [None] * (n + 1)  # best[end] = (score, start, id)
        best[0] = (0.0, -1, -1)
        for start in range(n):
            base = best[start][0]
            single = False
            for end in range(start + 1, min(n, start + self.max_piece_len) + 1):
                tid = self.token_to_id.get(text[start:end])
                if tid is None:
                    continue
                single = single or end == start + 1
                score = base + self.scores[tid]
                if best[end] is None or score > best[end][0]:
                    best[end] = (score, start, tid)
            if not single:
                score = base + self.unk_score
                if best[start + 1] is None or score > best[start + 1][0]:
                    best[start + 1] = (score, start, self.unk_token_id)
        pieces, end = [], n
        while end > 0:
            _, start, tid = best[end]
            if tid == self.unk_token_id and pieces and pieces[-1][0] == self.unk_token_id:
                pieces[-1] = (tid, text[start:end] + pieces[-1][1])
            else:
                pieces.append((tid, text[start:end]))
            end = start
        return pieces[::-1]

    def __call__(self, text, padding=False, truncation=None, max_length=None, return_tensors=None,
                 return_attention_mask=True, **kwargs):
        """Encode a string or a list of strings into `input_ids` (and `attention_mask`)."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        texts = _check_texts(text)
        padding, truncation, max_length = self._resolve_lengths(padding, truncation, max_length)
        rows = []
        for t in texts:
            ids = self._encode_ids(t)
            if truncation:
                ids = ids[:max(max_length - 2, 0)]
            rows.append([self.bos_token_id] + ids + [self.eos_token_id])
        masks = [[1] * len(r) for r in rows]
        if padding:
            target = max_length if padding == "max_length" else max(len(r) for r in rows)
            masks = [m + [0] * (target - len(r)) for r, m in zip(rows, masks)]
            rows = [r + [self.pad_token_id] * (target - len(r)) for r in rows]
        enc = {"input_ids": rows}
        if return_attention_mask:
            enc["attention_mask"] = masks
        return BatchEncoding(_to_tensors(enc, return_tensors, batched=not isinstance(text, str)))

    def _resolve_lengths(self, padding, truncation, max_length):
        if padding is True:
            padding = "longest"
        elif padding in (False, None, "do_not_pad"):
            padding = False
        elif padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        if truncation in (True, "longest_first", "only_first"):
            truncation = True
        elif truncation in (False, None, "do_not_truncate"):
            truncation = False
        else:
            raise ValueError(f"truncation must be True, False or 'longest_first', got {truncation!r}")
        if max_length is None and (truncation or padding == "max_length"):
            if self.model_max_length < NO_MAX_LENGTH:
                max_length = self.model_max_length
            elif padding == "max_length":
                raise ValueError("padding='max_length' needs max_length: this tokenizer has no model_max_length "
                                 "in its tokenizer_config.json")
            else:
                truncation = False  # nothing to truncate to, as in transformers
        if max_length is not None and (not isinstance(max_length, int) or max_length < 0):
            raise ValueError(f"max_length must be a non-negative int, got {max_length!r}")
        return padding, truncation, max_length

    # ---- decoding -----------------------------------------------------------------------------------------

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        if isinstance(ids, (int, np.integer)):
            return self.id_to_token[self._check_id(ids)]
        return [self.id_to_token[self._check_id(i)] for i in ids
                if not (skip_special_tokens and int(i) in self.special_ids)]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.token_to_id.get(tokens, self.unk_token_id)
        return [self.token_to_id.get(t, self.unk_token_id) for t in tokens]

    def _check_id(self, i):
        i = int(i)
        if not 0 <= i < len(self.id_to_token):
            raise ValueError(f"token id {i} is out of range for a vocabulary of {len(self.id_to_token)}")
        return i

    def decode(self, ids, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        """Text of `ids`: "▁" becomes a space, and the first token loses its leading one (tokenizers' Metaspace)."""
        if isinstance(ids, (int, np.integer)):
            ids = [ids]
        tokens = self.convert_ids_to_tokens(list(np.asarray(ids).reshape(-1)), skip_special_tokens)
        tokens = [t.replace(_SPACE_MARK, " ") for t in tokens]
        if tokens and tokens[0].startswith(" "):
            tokens[0] = tokens[0][1:]
        text = "".join(tokens)
        if clean_up_tokenization_spaces is None:
            clean_up_tokenization_spaces = self.clean_up_tokenization_spaces
        if clean_up_tokenization_spaces:
            for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                         (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(a, b)
        return text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None):
        return [self.decode(s, skip_special_tokens, clean_up_tokenization_spaces) for s in sequences]


# Grapheme_Cluster_Break tables (UAX #29, as `regex` 2026 / Unicode 17 has them) for what General_Category misses.
# Mc that are Extend, not SpacingMark (Other_Grapheme_Extend, and viramas that Unicode 16 made Extend):
_MC_EXTEND = set("\u09be\u09d7\u0b3e\u0b57\u0bbe\u0bd7\u0cc0\u0cc2\u0cc7\u0cc8\u0cca\u0ccb\u0cd5\u0cd6\u0d3e"
                 "\u0d57\u0dcf\u0ddf\u1715\u1734\u1b35\u1b3b\u1b3d\u1b43\u1b44\u1baa\u1bf2\u1bf3\u302e\u302f"
                 "\ua953\ua9c0\U000111c0\U00011235\U0001133e\U0001134d\U00011357\U000114b0\U000114bd"
                 "\U000115af\U000116b6\U00011930\U0001193d\U00016ff0\U00016ff1\U0001d165\U0001d166"
                 "\U0001d16d\U0001d16e\U0001d16f\U0001d170\U0001d171\U0001d172")
# Mc that are neither (Myanmar, Tai Tham, Tai Viet, Ahom vowel signs): plain GB999 breaks before them
_MC_OTHER = set("\u102b\u102c\u1038\u1062\u1063\u1064\u1067\u1068\u1069\u106a\u106b\u106c\u106d\u1083"
                "\u1087\u1088\u1089\u108a\u108b\u108c\u108f\u109a\u109b\u109c\u1a61\u1a63\u1a64\uaa7b"
                "\uaa7d\U00011720\U00011721")
_PREPEND = set("\u0600\u0601\u0602\u0603\u0604\u0605\u06dd\u070f\u0890\u0891\u08e2\u0d4e\U000110bd"
               "\U000110cd\U000111c2\U000111c3\U000113d1\U0001193f\U00011941\U00011a84\U00011a85"
               "\U00011a86\U00011a87\U00011a88\U00011a89\U00011d46\U00011f02")
# GB9c (Indic_Conjunct_Break=Linker): viramas that glue a following consonant into the same cluster
_LINKERS = set("\u094d\u09cd\u0acd\u0b4d\u0c4d\u0d4d\u1039\u17d2\u1a60\u1b44\u1bab\ua9c0\uaaf6\U00010a3f"
               "\U00011133\U000113d0\U0001193e\U00011a47\U00011a99\U00011f42")
_LINKER_BLOCKS = {ord(c) >> 7 for c in _LINKERS}
_BRAHMIC_CONSONANT_ROWS = {*range(0x15, 0x3B), *range(0x58, 0x60), 0x70, 0x71, *range(0x78, 0x80)}
# Extended_Pictographic, coarsely (emoji blocks and the scattered older symbols that have emoji forms)
_PICT = ((0xA9, 0xA9), (0xAE, 0xAE), (0x203C, 0x203C), (0x2049, 0x2049), (0x2122, 0x2122), (0x2139, 0x2139),
         (0x2194, 0x2199), (0x21A9, 0x21AA), (0x231A, 0x231B), (0x2328, 0x2328), (0x23CF, 0x23CF),
         (0x23E9, 0x23FA), (0x24C2, 0x24C2), (0x25AA, 0x25AB), (0x25B6, 0x25B6), (0x25C0, 0x25C0),
         (0x25FB, 0x25FE), (0x2600, 0x2767), (0x2795, 0x27BF), (0x2934, 0x2935), (0x2B05, 0x2B07),
         (0x2B1B, 0x2B1C), (0x2B50, 0x2B55), (0x3030, 0x3030), (0x303D, 0x303D), (0x3297, 0x3299),
         (0x1F000, 0x1FAFF), (0x1FC00, 0x1FFFD))


def _gcb(c):
    """Grapheme_Cluster_Break of `c` (plus "Pict" for Extended_Pictographic), from General_Category and the tables."""
    o, cat = ord(c), unicodedata.category(c)
    if c in "\r\n\u200d":
        return {"\r": "CR", "\n": "LF", "\u200d": "ZWJ"}[c]
    if 0x1100 <= o <= 0x115F or 0xA960 <= o <= 0xA97C:
        return "L"
    if 0x1160 <= o <= 0x11A7 or 0xD7B0 <= o <= 0xD7C6:
        return "V"
    if 0x11A8 <= o <= 0x11FF or 0xD7CB <= o <= 0xD7FB:
        return "T"
    if 0xAC00 <= o <= 0xD7A3:
        return "LVT" if (o - 0xAC00) % 28 else "LV"
    if 0x1F1E6 <= o <= 0x1F1FF:
        return "RI"
    if c in _PREPEND:
        return "Prepend"
    if cat in ("Mn", "Me") or c in _MC_EXTEND or c in "\u200c\uff9e\uff9f" or 0x1F3FB <= o <= 0x1F3FF \
            or 0xE0020 <= o <= 0xE007F:  # + ZWNJ, half-width sound marks, skin tones, tag characters
        return "Extend"
    if cat in ("Cc", "Cf", "Zl", "Zp", "Cs") or (cat == "Cn" and (o == 0x2065 or 0xFFF0 <= o <= 0xFFF8
                                                                  or 0xE0000 <= o <= 0xE0FFF)):
        return "Control"  # Cn here: unassigned Default_Ignorable_Code_Point
    if (cat == "Mc" and c not in _MC_OTHER) or c in "\u0e33\u0eb3":  # Thai / Lao sara am
        return "SpacingMark"
    return "Pict" if any(a <= o <= b for a, b in _PICT) else "Other"


def _is_conjunct_consonant(c):
    """Indic_Conjunct_Break=Consonant, approximated: a letter in a 128-code-point block that has a linker; in the
    Brahmic blocks U+0900-0D7F only the consonant rows (not independent vowels, avagraha, OM, chillus)."""
    o = ord(c)
    if unicodedata.category(c) != "Lo" or o >> 7 not in _LINKER_BLOCKS:
        return False
    return not 0x900 <= o < 0xD80 or (o & 0x7F in _BRAHMIC_CONSONANT_ROWS and not 0xD7A <= o <= 0xD7F)


def _graphemes(text):
    """Extended grapheme clusters (UAX #29) as the Rust `unicode-segmentation` crate that tokenizers uses and
    `regex`'s \\X give them, with only `unicodedata` (Unicode 14 in Python 3.11; see tests for known gaps)."""
    clusters, prev = [], None
    ri = 0  # regional indicators in a row just before (GB12/13 pair them up)
    emoji = 0  # 1: Extended_Pictographic Extend*, 2: then ZWJ (GB11)
    conjunct = 0  # 1: InCB consonant [Extend|Linker]*, 2: and a linker seen among those (GB9c)
    for c in text:
        cur = _gcb(c)
        consonant = _is_conjunct_consonant(c)
        if prev is None or prev in ("CR", "LF", "Control") or cur in ("CR", "LF", "Control"):
            join = prev == "CR" and cur == "LF"  # GB3-GB5
        else:
            join = ((prev == "L" and cur in ("L", "V", "LV", "LVT"))  # GB6
                    or (prev in ("LV", "V") and cur in ("V", "T"))  # GB7
                    or (prev in ("LVT", "T") and cur == "T")  # GB8
                    or cur in ("Extend", "ZWJ", "SpacingMark") or prev == "Prepend"  # GB9, GB9a, GB9b
                    or (conjunct == 2 and consonant)  # GB9c
                    or (emoji == 2 and cur == "Pict")  # GB11
                    or (cur == "RI" and ri % 2 == 1))  # GB12/13
        if join:
            clusters[-1] += c
        else:
            clusters.append(c)
        ri = ri + 1 if cur == "RI" else 0
        if cur == "Pict" or (emoji == 1 and cur == "Extend"):
            emoji = 1
        else:
            emoji = 2 if emoji == 1 and cur == "ZWJ" else 0
        if consonant:
            conjunct = 1
        elif c in _LINKERS and conjunct:
            conjunct = 2
        elif cur not in ("Extend", "ZWJ") or c == "\u200c":  # ZWNJ ends a conjunct
            conjunct = 0
        prev = cur
    return clusters


def _check_texts(text):
    if isinstance(text, str):
        return [text]
    if isinstance(text, (list, tuple)):
        if not text:
            raise ValueError("text must be a string or a non-empty list of strings, got an empty list")
        for t in text:
            if not isinstance(t, str):
                raise TypeError(f"text must be a string or a list of strings, got an item of type {type(t).__name__}")
        return list(text)
    raise TypeError(f"text must be a string or a list of strings, got {type(text).__name__}")


def _to_tensors(enc, return_tensors, batched):
    if return_tensors in ("np", "numpy"):
        lengths = {len(r) for r in enc["input_ids"]}
        if len(lengths) > 1:
            raise ValueError("sequences have different lengths: pass padding=True (or 'max_length') "
                             "to return NumPy arrays")
        return {k: np.asarray(v, dtype=np.int64).reshape(len(v), -1) for k, v in enc.items()}
    if return_tensors is not None:
        raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
    return enc if batched else {k: v[0] for k, v in enc.items()}
