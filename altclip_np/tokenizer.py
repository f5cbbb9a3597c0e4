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

Every step runs lazily, left to right, and a token is produced only once no later character can change it,
so `truncation=True` stops reading the text after `max_length - 2` tokens (see `_Lattice` for why the cut is
exact). A 10 MB line costs what its first `max_length` tokens cost.
"""
import json
import math
import re
import shutil
from itertools import chain, islice
from pathlib import Path

import numpy as np
import sentencepiece as spm

from .charsmap import CharsMap
from .config import read_json
from .encoding import BatchEncoding  # also importable from here, as from transformers.tokenization_utils_base
from .graphemes import _gcb, iter_graphemes

VOCAB_FILE = "sentencepiece.bpe.model"
CONFIG_FILE = "tokenizer_config.json"
# transformers' VERY_LARGE_INTEGER: "no maximum length" when tokenizer_config.json does not give one
NO_MAX_LENGTH = int(1e30)
UNK_PENALTY = 10.0  # unknown characters score min_score - 10, as in SentencePiece and tokenizers
# Rust's char::is_whitespace (Unicode White_Space), which tokenizers' WhitespaceSplit uses; str.split() differs
_WHITESPACE = frozenset("\t\n\x0b\x0c\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(map(chr, range(0x2000, 0x200B))))
_SPACE_MARK = "\u2581"
# Characters that may be squeezed out of long runs (see _squeeze): whitespace but CR (which pairs with LF into
# one grapheme), C0/C1 controls and a few invisible format characters, each always a grapheme of its own.
_SQUEEZABLE = (_WHITESPACE - {"\r"}) | {chr(i) for i in (*range(0x20), *range(0x7F, 0xA0)) if i != 0x0D} \
    | set("\u00ad\u200b\u2060\u2061\u2062\u2063\u2064\ufeff")


class XLMRobertaTokenizer:
    """Turns text into XLM-R input ids exactly as transformers' `XLMRobertaTokenizer` does."""

    def __init__(self, vocab_file, model_max_length=NO_MAX_LENGTH, mask_lstrip=False,
                 clean_up_tokenization_spaces=False, config=None):
        self.vocab_file = str(vocab_file)
        try:
            self.sp = spm.SentencePieceProcessor(model_file=self.vocab_file)
            # the model's precompiled normalisation map
            self.charsmap = CharsMap(self.sp.serialized_model_proto())
        except (RuntimeError, OSError, ValueError) as e:
            raise OSError(f"{self.vocab_file} is not a readable SentencePiece model: {str(e)[:300]}") from None
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, (int, float)) \
                or not 0 <= model_max_length < math.inf:
            raise ValueError(f"model_max_length must be a non-negative number, got {str(model_max_length)[:50]}")
        self.model_max_length = int(model_max_length)
        self.mask_lstrip = bool(mask_lstrip)
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        self.config = dict(config or {})
        self._build_vocab()

    def _build_vocab(self):
        specials = ["<s>", "<pad>", "</s>", "<unk>"]
        if self.sp.get_piece_size() < 4:
            raise OSError(f"{self.vocab_file}: a SentencePiece model with {self.sp.get_piece_size()} pieces, "
                          "not an XLM-R one (<unk>, <s>, </s> and pieces)")
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
        # longest first, so that the alternation behaves like leftmost-longest matching. (An lstrip <mask>
        # takes the whitespace before it in _encode: `\s*<mask>` in the pattern backtracks quadratically.)
        names = sorted(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], key=len, reverse=True)
        self._special_re = re.compile("|".join(map(re.escape, names)))
        self._build_squeeze()

    def _build_squeeze(self):
        """Runs of blank characters (each its own grapheme, normalized to whitespace or to nothing) affect the
        tokens only through "is there whitespace in the run": the middle of such a run can be replaced by one
        character with the same effect, in C (re.sub), so a megabyte of spaces costs nothing in Python.
        The first and last characters of the run stay: they may join the graphemes next to the run."""
        def output(c):
            mapped = self.charsmap.lookup(c)
            return c if mapped is None else mapped

        def blank(text):
            return all(x in _WHITESPACE for x in text)
        chars = sorted(c for c in _SQUEEZABLE if blank(output(c)) and (c in _WHITESPACE or _gcb(c) in ("Control", "LF")))
        self._silent = {c for c in chars if output(c) == ""}
        self._space_blank = bool(output(" ")) and blank(output(" ")) and " " in chars
        chars = "".join(map(re.escape, chars))
        self._run_re = re.compile(f"[{chars}]{{3,}}") if chars else None
        self._not_blank = re.compile(f"[^{chars}]") if chars else None

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
        config = read_json(root / CONFIG_FILE) if (root / CONFIG_FILE).is_file() else {}
        mask = config.get("mask_token")
        options = {
            "model_max_length": config.get("model_max_length") or NO_MAX_LENGTH,
            "mask_lstrip": isinstance(mask, dict) and bool(mask.get("lstrip")),
            "clean_up_tokenization_spaces": bool(config.get("clean_up_tokenization_spaces", False)),
        }
        options.update(kwargs)
        try:
            return cls(vocab_file, config=config, **options)
        except ValueError as e:
            raise ValueError(f"{root / CONFIG_FILE}: {e}") from None

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

    def _encode(self, text):
        """(id, surface piece) pairs, lazily: each is final when it is yielded."""
        start = 0
        for match in self._special_re.finditer(text):  # special-token strings typed in the text
            name, end = match.group(), match.start()
            if name == "<mask>" and self.mask_lstrip:
                end = start + len(text[start:end].rstrip())  # str.rstrip strips what re's \s matches
            if end > start:
                yield from self._encode_span(text[start:end])
            yield self.token_to_id[name], name
            start = match.end()
        if start < len(text):
            yield from self._encode_span(text[start:])

    def _encode_span(self, span):
        """Normalize, split on whitespace, "▁" before each word, split before every "▁" (Metaspace), and
        segment each piece, one character at a time."""
        lattice = None  # the piece being read; None between words
        for chunk in self._normalized(chain.from_iterable(self._squeezed(span))):
            for c in chunk:
                if c in _WHITESPACE:
                    if lattice is not None:
                        yield from lattice.finish()
                        lattice = None
                    continue
                if c == _SPACE_MARK or lattice is None:  # a new piece, which starts with "▁"
                    if lattice is not None:
                        yield from lattice.finish()
                    lattice = _Lattice(self)
                    lattice.push(_SPACE_MARK)
                    if c == _SPACE_MARK:
                        continue
                final = lattice.push(c)
                if final:
                    yield from final
        if lattice is not None:
            yield from lattice.finish()

    def _squeezed(self, span, chunk=1 << 16):
        """`span` with its long blank runs shortened, lazily: in chunks cut before a non-blank character, so that
        no run crosses a cut (and a truncated encoding never scans the rest of a 10 MB line)."""
        start = 0
        while start < len(span):
            end = start + chunk
            if self._run_re is None or end >= len(span):
                end = len(span)
            else:
                match = self._not_blank.search(span, end)
                end = match.start() if match else len(span)
            yield span[start:end] if self._run_re is None else self._run_re.sub(self._shorter, span[start:end])
            start = end

    def _shorter(self, match):
        run = match.group()
        middle = run[1:-1]
        if all(c in self._silent for c in middle):  # normalizes to nothing: one such character does the same
            return run[0] + middle[0] + run[-1]
        return run[0] + " " + run[-1] if self._space_blank else run  # some whitespace: one space does the same

    def normalize(self, text):
        """tokenizers' `Precompiled` normalizer, which differs from SentencePiece's own on combining sequences.

        A grapheme shorter than 6 UTF-8 bytes is replaced as a whole by the mapping of its *shortest* mapped
        prefix (so "Ａ\u0301" becomes "A"); longer graphemes, and those with no mapped prefix, map char by char.
        """
        return "".join(self._normalized(text))

    def _normalized(self, text):  # `normalize`, one grapheme at a time
        lookup = self.charsmap.lookup
        for g in iter_graphemes(text):
            if len(g) > 1 and len(g.encode("utf-8")) < 6:
                mapped = lookup(g)
                if mapped is not None:
                    yield mapped
                    continue
            for c in g:
                mapped = lookup(c)
                yield c if mapped is None else mapped

    def __call__(self, text, padding=False, truncation=None, max_length=None, return_tensors=None,
                 return_attention_mask=True, **kwargs):
        """Encode a string or a list of strings into `input_ids` (and `attention_mask`)."""
        if kwargs:
            raise TypeError(f"unexpected keyword arguments {sorted(kwargs)}")
        texts = _check_texts(text)
        padding, truncation, max_length = self._resolve_lengths(padding, truncation, max_length)
        limit = max(max_length - 2, 0) if truncation else None  # the encoding stops reading there
        rows = [[self.bos_token_id] + [i for i, _ in islice(self._encode(t), limit)] + [self.eos_token_id]
                for t in texts]
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


class _Lattice:
    """Unigram Viterbi over one piece, fed one character at a time: ties go to the earliest start, unknown
    characters score `unk_score` and adjacent <unk>s fuse, exactly as a whole-piece search would (the same
    candidates, in the same order, with the same float sums: best[end] is the first best over ascending starts).

    Why tokens can be handed out before the piece ends (exactly, not approximately): every token is at most
    M = max_piece_len characters, so any segmentation of any longer text has a boundary in each window of M
    consecutive positions. The search's final path to any later end therefore passes through some position of
    the window W = [e - M + 1, e], and from there follows that position's back-pointers, which no later
    character changes. When the back-pointer chains of all of W meet at a position p, every final path passes
    through p and its tokens up to p are the chain of p: they are final. (Only a trailing <unk> is held back,
    since a following <unk> would fuse into it.) When chains never meet -- exact ties, or a long run of
    unknown characters fused into one <unk> -- nothing is final before the run ends, and no exact method can
    do better: the first token then depends on the run's end."""

    __slots__ = ("vocab", "scores", "unk", "unk_score", "M", "chars", "window", "best", "done", "held", "check")

    def __init__(self, tok):
        self.vocab, self.scores, self.unk, self.unk_score = tok.token_to_id, tok.scores, tok.unk_token_id, tok.unk_score
        self.M = tok.max_piece_len
        self.chars, self.window = [], ""
        self.best = [(0.0, -1, -1)]  # best[end] = (score, start, id)
        self.done = 0  # tokens ending at or before this position have been handed out
        self.held = None  # (start, end) of a trailing <unk> not handed out yet
        self.check = 2 * self.M  # when to look for a meeting point next (amortised: every M characters)

    def push(self, c):  # -> the tokens that became final (usually none)
        self.chars.append(c)
        w = self.window = (self.window + c)[-self.M:]
        e, best, vocab, scores = len(self.chars), self.best, self.vocab, self.scores
        top, first = None, e - len(w)
        for k in range(len(w)):  # starts ascending
            tid = vocab.get(w[k:])
            if tid is not None:
                score = best[first + k][0] + scores[tid]
                if top is None or score > top[0]:
                    top = (score, first + k, tid)
        if c not in vocab:  # no single-character token: the unknown-character edge from e - 1
            score = best[e - 1][0] + self.unk_score
            if top is None or score > top[0]:
                top = (score, e - 1, self.unk)
        best.append(top)
        if e < self.check:
            return ()
        self.check = e + self.M
        return self._emit(self._meeting_point(e))

    def _meeting_point(self, e):
        """The latest position that the back-pointer chains of all positions in [e - M + 1, e] pass through."""
        frontier = set(range(max(self.done, e - self.M + 1), e + 1))
        while len(frontier) > 1:
            x = max(frontier)
            frontier.discard(x)
            frontier.add(self.best[x][1])
        return frontier.pop()

    def _emit(self, p, last=False):
        path, x = [], p
        while x > self.done:
            _, start, tid = self.best[x]
            path.append((start, x, tid))
            x = start
        self.done, out = p, []
        for start, end, tid in reversed(path):
            if tid == self.unk and self.held is not None:
                self.held = (self.held[0], end)  # adjacent unknown runs fuse into one <unk>
                continue
            if self.held is not None:
                out.append((self.unk, "".join(self.chars[self.held[0]:self.held[1]])))
                self.held = None
            if tid == self.unk:
                self.held = (start, end)
            else:
                out.append((tid, "".join(self.chars[start:end])))
        if last and self.held is not None:
            out.append((self.unk, "".join(self.chars[self.held[0]:self.held[1]])))
        return out

    def finish(self):  # the piece ended: the rest of the path
        return self._emit(len(self.chars), last=True)


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
