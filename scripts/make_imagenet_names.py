"""Generate the ImageNet-1k → WordNet table shipped in the package (``src/imgclust/imagenet_wordnet.json.gz``).

Build-time only: needs ``nltk`` (``pip install nltk``) and WordNet 3.0 from Debian (``apt-get install wordnet-base
wordnet-sense-index``, files in /usr/share/wordnet); the package reads the generated table and needs neither.

ImageNet-1k classes are WordNet 3.0 noun synsets; their ids (``n<8-digit offset>``, in the standard class order
0..999) come from timm's ``timm/data/_info/imagenet_synsets.txt``. The table holds, for every class and every
synset above one, its short name (first lemma) and its direct hypernyms, so the package can compute each class's
hypernym chain:

    {"wordnet": "3.0", "classes": [wnid × 1000],
     "synsets": {wnid: [short name, [direct hypernym wnids]]}}

nltk's WordNet reader wants its files in ``<data>/corpora/wordnet/`` plus a ``lexnames`` file that Debian does
not ship; they are copied (nltk does not follow links into another layout) into a temporary folder.

Usage: python scripts/make_imagenet_names.py [--wordnet /usr/share/wordnet] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "src" / "imgclust" / "imagenet_wordnet.json.gz"

# WordNet's 45 lexicographer files (lexnames(5WN)): number, name, syntactic category (1 noun .. 4 adverb).
LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body
noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive
noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity noun.relation
noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition verb.communication
verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion verb.perception
verb.possession verb.social verb.stative verb.weather adj.ppl""".split()
_CATEGORY = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}


def lexnames_text() -> str:
    return "".join(f"{i:02d}\t{name}\t{_CATEGORY[name.split('.')[0]]}\n" for i, name in enumerate(LEXNAMES))


def open_wordnet(wordnet_dir: Path, data_dir: Path):
    """nltk's WordNet reader on a copy of ``wordnet_dir`` under ``data_dir/corpora/wordnet``."""
    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    nltk.data.path.insert(0, str(data_dir))  # nltk only reads corpora under its data path
    root = data_dir / "corpora" / "wordnet"
    root.mkdir(parents=True)
    for f in wordnet_dir.iterdir():
        if f.is_file():
            shutil.copyfile(f, root / f.name)
    (root / "lexnames").write_text(lexnames_text())
    return WordNetCorpusReader(str(root), None)


def imagenet_wnids() -> list[str]:
    import timm

    path = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    wnids = path.read_text().split()
    if len(wnids) != 1000 or wnids != sorted(wnids):
        raise SystemExit(f"{path}: expected the 1000 ImageNet-1k wnids in sorted (standard) order")
    return wnids


def wnid(synset) -> str:
    return f"{synset.pos()}{synset.offset():08d}"


def build_table(wn, class_wnids: list[str]) -> dict:
    synsets: dict[str, list] = {}
    todo = [wn.synset_from_pos_and_offset("n", int(w[1:])) for w in class_wnids]
    for s, w in zip(todo, class_wnids, strict=True):
        assert wnid(s) == w, (s, w)
    while todo:
        s = todo.pop()
        if wnid(s) in synsets:
            continue
        parents = s.hypernyms() + s.instance_hypernyms()
        synsets[wnid(s)] = [s.lemma_names()[0].replace("_", " "), sorted(wnid(p) for p in parents)]
        todo += parents
    return {"wordnet": "3.0", "classes": class_wnids, "synsets": dict(sorted(synsets.items()))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wordnet", type=Path, default=Path("/usr/share/wordnet"))
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        table = build_table(open_wordnet(args.wordnet, Path(tmp)), imagenet_wnids())
    # mtime=0: the same table gives the same bytes (no spurious diffs when regenerated).
    with open(args.out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as f:
        f.write(json.dumps(table, separators=(",", ":")).encode())
    print(f"{args.out}: {len(table['classes'])} classes, {len(table['synsets'])} synsets, "
          f"{args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
