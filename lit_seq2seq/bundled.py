"""The files shipped with the package: the task and trainer configs (`--config NAME`) and the export contract document.

They live at the repository's root (configs/, export/README.md); the wheel carries them inside the package
(lit_seq2seq/configs/, lit_seq2seq/contract_doc/README.md, see pyproject.toml). Both layouts are looked up by path, so
an installed wheel and an editable install of a checkout find the same files.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def _first_existing(*candidates: Path) -> Path:
    return next((path for path in candidates if path.exists()), candidates[0])


def configs_dir() -> Path:
    """The folder of the bundled configs: inside the installed package, else the checkout's configs/."""
    return _first_existing(_PACKAGE / "configs", _PACKAGE.parent / "configs")


def contract_path() -> Path:
    """The contract document of the exported files (export/README.md in a checkout)."""
    return _first_existing(_PACKAGE / "contract_doc" / "README.md", _PACKAGE.parent / "export" / "README.md")


def config_names() -> dict[str, Path]:
    """Bundled config name -> file: 'reverse_fast' for configs/reverse_fast.yaml, 'trainer/gpu' for an overlay."""
    root = configs_dir()
    return {path.relative_to(root).with_suffix("").as_posix(): path for path in sorted(root.rglob("*.yaml"))}


def resolve_config(value: str) -> str:
    """A --config value as LightningCLI should see it: an existing path as given, a bundled config's name (with or
    without .yaml, 'configs/NAME.yaml' too) as its file. Raises ValueError for a value that is neither, naming the
    bundled configs; inline YAML/JSON (jsonargparse also takes that) passes through."""
    if Path(value).exists() or any(c in value for c in "{}:\n") or not value.strip():
        return value
    names = config_names()
    # 'configs/reverse.yaml' as the README writes it names the bundled file too, from any folder.
    name = value.removesuffix(".yaml").removeprefix("configs/")
    if name in names:
        return str(names[name])
    raise ValueError(f"--config {value}: no such file, and not a bundled config ({', '.join(names)})")
