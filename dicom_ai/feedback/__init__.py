"""Ground truth in: final reports received over HL7 (MLLP), read into judgements per model label.

- hl7_report.py: an ORU^R01 parsed into what matching and derivation need, and the ACK answered;
- derive.py: a report's text and coded observations read against a model card's report_terms;
- listener.py: the bounded MLLP server the node runs (setting hl7_listen).

The stage knows no store or model: node.py and validation.py wire what it parses to the judgements
they record.
"""
