"""Write `tutoring/antonyms.txt`: the antonym pairs of WordNet 3.0, one pair a line.

The support check treats a sentence as contradicting a passage sentence it closely follows when
it uses a word whose antonym the passage sentence uses instead ("rigid" for "flexible", "last"
for "first"). The pairs come from WordNet's own antonym pointers (adjectives, adverbs, verbs and
nouns), not from the sentences the check is measured on. Single words only, lower case, in
the form `tutoring.checks.content_words` gives them (stemmed), so the check compares like with like.

Run once, where Debian's `wordnet-base` is unpacked (`apt-get download wordnet-base && dpkg -x
wordnet-base_*.deb wn`), and commit the result; nothing reads WordNet at run time.

    .venv/bin/python tools/wordnet_antonyms.py wn/usr/share/wordnet
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tutor_site.settings")
django.setup()

from tutoring.checks import content_words  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "tutoring" / "antonyms.txt"
HEADER = """\
# Antonym pairs from WordNet 3.0 (tools/wordnet_antonyms.py), stemmed as the support check
# compares words. WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved.
# Permission to use, copy, modify and distribute this database for any purpose and without fee
# or royalty is granted under the WordNet 3.0 license; THE DATABASE IS PROVIDED "AS IS" AND
# PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.
"""


def synsets(folder: Path, pos: str) -> dict[str, list[str]]:
    """offset -> the synset's words, from one data file."""
    found: dict[str, list[str]] = {}
    for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
        if line.startswith(" "):
            continue  # the licence at the top of the file
        fields = line.split(" ")
        count = int(fields[3], 16)
        found[fields[0]] = [fields[4 + 2 * i] for i in range(count)]
    return found


def pairs(folder: Path) -> set[tuple[str, str]]:
    """Lexical antonym pointers ('!'): word n of one synset against word m of another; and,
    for adjectives, each word of a head's satellite synsets ('&', similar to) against the
    head's antonym ("rigid", similar to "inflexible", against "flexible")."""
    found: set[tuple[str, str]] = set()
    similar: dict[str, list[str]] = {}  # adjective synset offset -> its satellites' offsets
    antonyms: list[tuple[str, str]] = []  # (head synset offset, antonym word) for adjectives
    code = {"adj": "a", "adv": "r", "verb": "v", "noun": "n"}
    adjectives: dict[str, list[str]] = {}
    for pos in code:
        words = synsets(folder, pos)
        if pos == "adj":
            adjectives = words
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith(" "):
                continue
            fields = line.split(" ")
            count = int(fields[3], 16)
            at = 4 + 2 * count
            pointers = int(fields[at])
            for k in range(pointers):
                symbol, offset, target_pos, source_target = fields[at + 1 + 4 * k : at + 5 + 4 * k]
                if symbol == "&" and pos == "adj":
                    similar.setdefault(fields[0], []).append(offset)
                if symbol != "!" or target_pos not in (code[pos], "s"):
                    continue
                source, target = int(source_target[:2], 16), int(source_target[2:], 16)
                left = fields[4 + 2 * (source - 1)]
                right = words.get(offset, [""] * target)[target - 1] if target else ""
                found.add((left, right))
                if pos == "adj":
                    antonyms.append((fields[0], right))
    for head, antonym in antonyms:
        for satellite in similar.get(head, []):
            found.update((word, antonym) for word in adjectives.get(satellite, []))
    # Comparatives of direct adjective antonyms: "longer" against "shorter".
    for head, antonym in set(antonyms):
        for word in adjectives.get(head, []):
            a, b = comparative(word), comparative(antonym)
            if a and b:
                found.add((a, b))
    return found


def comparative(word: str) -> str:
    """The -er form of a short plain adjective ("long" -> "longer", "wide" -> "wider"), or ''."""
    word = word.split("(")[0]
    if len(word) > 6 or not word.isalpha() or word.endswith(("ed", "er")):
        return ""
    if word.endswith("e"):
        return word + "r"
    if word.endswith("y"):
        return word[:-1] + "ier"
    return word + "er"


def stemmed(word: str) -> str:
    """One content word (stemmed), or '' for a phrase, a stop word or a marked form."""
    word = word.split("(")[0].casefold()  # 'high(a)' -> 'high'
    if "_" in word or "-" in word:
        return ""
    words = content_words(word)
    return next(iter(words)) if len(words) == 1 else ""


def main() -> int:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    folder = Path(sys.argv[1])
    kept = set()
    for left, right in pairs(folder):
        a, b = stemmed(left), stemmed(right)
        if a and b and a != b:
            kept.add(tuple(sorted((a, b))))
    OUT.write_text(HEADER + "".join(f"{a} {b}\n" for a, b in sorted(kept)), encoding="utf-8")
    print(f"{len(kept)} antonym pairs written to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
