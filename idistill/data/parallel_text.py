"""Parallel text in plain files, `{split}.{lang}` one sentence a line (e.g. Multi30k)."""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

from idistill.atomic import temp_file

# Multi30k task 1 (Elliott et al. 2016), raw cased text at a pinned commit of multi30k/dataset;
# sha256 of the decompressed files.
MULTI30K_URL = (
    "https://raw.githubusercontent.com/multi30k/dataset/"
    "a3d2e0d26b56f3846f66a952536ffed4e401d05a/data/task1/raw/{name}.gz"
)
MULTI30K_SHA256 = {
    "train.de": "2c2b73fd2b548fbcde3a875e0a78d6ee94d498bfdee6bd3eae3945779e9ddf72",
    "train.en": "460a15fbd157e34a7a9957ee388c1ca247fe47af3ef25fb50442af6c274e0fc6",
    "val.de": "660e09eb7e1da2f856ea13ee5ad3cf6d36b3d5b0b733c857e94c5747a3dfc660",
    "val.en": "1f2a23d992769b5b3d209b0a10dd0b77c08cceb1f20dfb97ed0aafa49d107227",
    "test_2016_flickr.de": "4be6b5b3236b79c25475c6bb829800a7ce559e9ba7a1f6c2394fe4d40be46d16",
    "test_2016_flickr.en": "399a4382932c1aadd3ceb9bef1008d388a64c76d4ae4e9d4728c6f4301cac182",
}


class DataSourceError(RuntimeError):
    """Data that is missing, incomplete or corrupt; the message says what to fetch or pass."""


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def split_lines(text: str) -> list[str]:
    """Lines as Perl and awk see them: split at "\n" only (text can hold U+2028, U+0085 and
    friends, at which str.splitlines() would break a sentence), no empty line after the last."""
    lines = text.split("\n")
    return lines[:-1] if lines[-1] == "" else lines


def read_text(path: Path) -> str:
    """A UTF-8 text file; DataSourceError naming the file, line and byte where it is not UTF-8."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataSourceError(
            f"{path}: {not_utf8(data, e)}: convert the file to UTF-8 (iconv -f <its encoding> "
            "-t UTF-8) or fix that line"
        ) from None


def not_utf8(data: bytes, e: UnicodeDecodeError) -> str:
    """Where `data` stops being UTF-8, for a message: its line, byte in the line and value."""
    line = data.count(b"\n", 0, e.start) + 1
    column = e.start - data.rfind(b"\n", 0, e.start)
    return f"line {line}, byte {column} (0x{data[e.start]:02x}) is not UTF-8"


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file, split at "\n" only (see split_lines)."""
    return split_lines(read_text(path))


def read_parallel(
    folder: Path, src: str, tgt: str, splits: dict[str, str], sha256: dict[str, str] | None = None
) -> dict[str, list[tuple[str, str]]]:
    """{split: [(source, target)]} from `folder/{file}.{src}` and `folder/{file}.{tgt}`, where
    `splits` maps our split names (train, valid, test) to the file stems of the corpus."""
    folder = Path(folder).expanduser()
    paths = {
        (split, lang): folder / f"{stem}.{lang}"
        for split, stem in splits.items()
        for lang in (src, tgt)
    }
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        raise DataSourceError(f"missing parallel text file(s): {', '.join(missing)}")
    for path in paths.values():
        expected = (sha256 or {}).get(path.name)
        if expected and sha256_of(path) != expected:
            raise DataSourceError(
                f"{path} is not the expected file (sha256 mismatch): "
                "re-download it or point task.source at a good copy"
            )
    raw = {}
    for split in splits:
        src_lines, tgt_lines = read_lines(paths[split, src]), read_lines(paths[split, tgt])
        if len(src_lines) != len(tgt_lines):
            raise DataSourceError(
                f"{paths[split, src]} has {len(src_lines)} lines but {paths[split, tgt]} has "
                f"{len(tgt_lines)}: the two sides of a split must align line by line"
            )
        raw[split] = [(s.strip(), t.strip()) for s, t in zip(src_lines, tgt_lines, strict=True)]
    return raw


def download_multi30k(dest: Path, src: str, tgt: str, splits: dict[str, str]) -> Path:
    """Fetch the Multi30k files of `splits` into `dest` (pinned commit, sha256-checked)."""
    dest.mkdir(parents=True, exist_ok=True)
    for stem in splits.values():
        for lang in (src, tgt):
            name = f"{stem}.{lang}"
            target = dest / name
            if target.is_file() and sha256_of(target) == MULTI30K_SHA256.get(name):
                continue
            url = MULTI30K_URL.format(name=name)
            try:
                with urllib.request.urlopen(url, timeout=60) as response:
                    payload = gzip.decompress(response.read())
            except OSError as e:  # URLError, timeouts, a truncated gzip stream
                raise DataSourceError(
                    f"could not fetch {url} ({e}); download Multi30k's data/task1/raw files, "
                    "gunzip them into one folder and pass task.source=/path/to/that/folder"
                ) from e
            tmp, f = temp_file(dest, prefix=name + ".")  # the umask's mode, not mkstemp's 0600
            with f:
                f.write(payload)
            if MULTI30K_SHA256.get(name) and sha256_of(tmp) != MULTI30K_SHA256[name]:
                tmp.unlink()
                raise DataSourceError(f"{url} did not match its pinned sha256; not used")
            os.replace(tmp, target)
    return dest
