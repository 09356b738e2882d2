"""The demo recipes by name and the model folder each writes (cheap to import: the CLI lists them)."""

from __future__ import annotations

DEMO_FOLDERS: dict[str, str] = {
    "chest-xray": "chest-xray-demo",
    "mammography": "mammography-demo",
    "brain-mr": "brain-mr-demo",
    "ct-head": "ct-head-demo",
    "endoscopy": "endoscopy-demo",
}
DEMO_NAMES: tuple[str, ...] = tuple(DEMO_FOLDERS)
