"""Extended grapheme clusters (Unicode UAX #29), as transformers' tokenizers finds them.

tokenizers normalises XLM-R text one grapheme cluster at a time (the Rust unicode-segmentation crate, Unicode
17.0.0), so the tokenizer needs the same clusters. The properties come from grapheme_table.py (Unicode 17.0.0),
not from `unicodedata`, whose Unicode version changes with Python's (13.0 in 3.10 ... 15.1 in 3.13).
"""
from bisect import bisect_right

from .grapheme_table import CLASSES, STARTS

# class letter -> (Grapheme_Cluster_Break, Indic_Conjunct_Break); "Pict" stands for Extended_Pictographic
_NAMES = {"r": ("CR", None), "n": ("LF", None), "C": ("Control", None), "Z": ("ZWJ", "Extend"),
          "K": ("Extend", "Linker"), "X": ("Extend", "Extend"), "E": ("Extend", None), "P": ("Prepend", None),
          "S": ("SpacingMark", None), "L": ("L", None), "V": ("V", None), "T": ("T", None),
          "R": ("RI", None), "p": ("Pict", None), "c": ("Other", "Consonant"), "O": ("Other", None)}


def _gcb(c):
    """(Grapheme_Cluster_Break, Indic_Conjunct_Break) of the character `c`."""
    letter = CLASSES[bisect_right(STARTS, ord(c)) - 1]
    if letter == "H":  # Hangul syllables: every 28th from U+AC00 has no final consonant
        return ("LVT" if (ord(c) - 0xAC00) % 28 else "LV"), None
    return _NAMES[letter]


def graphemes(text):
    """Extended grapheme clusters of `text` (UAX #29 rules GB3-GB999) as unicode-segmentation gives them."""
    return list(iter_graphemes(text))


def iter_graphemes(text):
    """`graphemes`, lazily: a cluster is yielded once the next character is known to start a new one, so a
    consumer that stops early has read only a prefix of `text`."""
    cluster, prev = "", None
    ri = 0  # regional indicators in a row just before (GB12/13 pair them up)
    emoji = 0  # 1: Extended_Pictographic Extend*, 2: then ZWJ (GB11)
    conjunct = 0  # 1: InCB consonant InCB-Extend*, 2: [Extend|Linker]* after it with at least one linker (GB9c)
    for c in text:
        cur, incb = _gcb(c)
        if prev is None or prev in ("CR", "LF", "Control") or cur in ("CR", "LF", "Control"):
            join = prev == "CR" and cur == "LF"  # GB3-GB5
        else:
            join = ((prev == "L" and cur in ("L", "V", "LV", "LVT"))  # GB6
                    or (prev in ("LV", "V") and cur in ("V", "T"))  # GB7
                    or (prev in ("LVT", "T") and cur == "T")  # GB8
                    or cur in ("Extend", "ZWJ", "SpacingMark") or prev == "Prepend"  # GB9, GB9a, GB9b
                    or (conjunct == 2 and incb == "Consonant")  # GB9c
                    or (emoji == 2 and cur == "Pict")  # GB11
                    or (cur == "RI" and ri % 2 == 1))  # GB12/13
        if join:
            cluster += c
        else:
            if cluster:
                yield cluster
            cluster = c
        ri = ri + 1 if cur == "RI" else 0
        if cur == "Pict" or (emoji == 1 and cur == "Extend"):
            emoji = 1
        else:
            emoji = 2 if emoji == 1 and cur == "ZWJ" else 0
        if incb == "Consonant":
            conjunct = 1
        elif incb == "Linker":
            conjunct = 2 if conjunct else 0
        elif incb != "Extend":
            conjunct = 0
        prev = cur
    if cluster:
        yield cluster
