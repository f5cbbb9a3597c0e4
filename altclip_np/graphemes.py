"""Extended grapheme clusters (Unicode UAX #29) with the standard library only.

transformers' tokenizers normalise XLM-R text one grapheme cluster at a time (the Rust unicode-segmentation
crate), so the tokenizer needs the same clusters; this is regex's `\\X` without the regex package.
"""
import unicodedata

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


def graphemes(text):
    """Extended grapheme clusters (UAX #29) as the Rust `unicode-segmentation` crate that tokenizers uses and
    `regex`'s \\X give them, with only `unicodedata` (Unicode 14 in Python 3.11; see tests for known gaps)."""
    return list(iter_graphemes(text))


def iter_graphemes(text):
    """`graphemes`, lazily: a cluster is yielded once the next character is known to start a new one, so a
    consumer that stops early has read only a prefix of `text`."""
    cluster, prev = "", None
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
        if consonant:
            conjunct = 1
        elif c in _LINKERS and conjunct:
            conjunct = 2
        elif cur not in ("Extend", "ZWJ") or c == "\u200c":  # ZWNJ ends a conjunct
            conjunct = 0
        prev = cur
    if cluster:
        yield cluster
