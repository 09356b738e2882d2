from __future__ import annotations

from dicom_ai.prioritize.pacs_history import PacsPrior, comparison_reasons


def test_names_the_newest_prior_the_ai_did_not_analyse() -> None:
    priors = [PacsPrior("1.3", "20261101", ("CR",), ""), PacsPrior("1.2", "20250101", ("CT",), ""),
              PacsPrior("1.1", "20240101", ("MR",), "")]
    assert comparison_reasons(priors, analysed={"1.3"}) == (
        "prior CT study of 2025-01-01 in the PACS and 1 older, without AI result: compare",)
    assert comparison_reasons(priors, analysed={"1.1", "1.2", "1.3"}) == ()
    assert comparison_reasons([PacsPrior("1.4", "", (), "")], analysed=set()) == (
        "prior study of an unknown date in the PACS, without AI result: compare",)
