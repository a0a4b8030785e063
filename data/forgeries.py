"""Signature-style galleries with skilled forgeries: ``root/<writer>/genuine/*`` and ``root/<writer>/forged/*``.

Such a folder (or zip, or list) is recognised with no flag when every group's classes are
``genuine`` and ``forged`` (at least one ``forged``). The identity is the writer: ``label`` becomes
the writer's name, ``group`` is emptied, and a boolean ``forged`` column marks the images under
``forged/``. Forgeries are never a class of their own: training uses them as negatives of their
writer, verification as impostor attempts, and evaluation reports genuine-vs-forgery EER.
"""
from __future__ import annotations

import pandas as pd

GENUINE, FORGED = "genuine", "forged"


def is_forgery_layout(table: pd.DataFrame) -> bool:
    """Whether a gallery table reads as ``writer/genuine|forged/image``."""
    if table.empty or "group" not in table or not table["group"].astype(bool).all():
        return False
    kinds = table["label"].astype(str).str.rsplit("/", n=1).str[-1]
    return bool(kinds.isin((GENUINE, FORGED)).all() and (kinds == FORGED).any())


def as_forgery_table(table: pd.DataFrame) -> pd.DataFrame:
    """``label`` = writer, ``group`` = ``""``, ``forged`` = image under ``forged/``."""
    kinds = table["label"].astype(str).str.rsplit("/", n=1).str[-1]
    out = table.copy()
    out["label"] = table["group"].astype(str)
    out["group"] = ""
    out["forged"] = (kinds == FORGED).to_numpy()
    return out


def recognise_forgeries(gallery):
    """A gallery with its table rewritten when it has the forgery layout (else unchanged)."""
    table = getattr(gallery, "table", None)
    if table is not None and "forged" not in table and is_forgery_layout(table):
        gallery.table = as_forgery_table(table)
    return gallery


def has_forgeries(table: pd.DataFrame) -> bool:
    return "forged" in table and bool(table["forged"].astype(bool).any())
