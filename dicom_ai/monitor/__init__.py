"""How the models do on the patients the node sees, and whether what arrives still looks like what they
were validated on.

- performance.py: per label, overall, per ISO week and per subgroup: sensitivity, specificity, PPV,
  NPV and agreement at the operating threshold with Wilson intervals, AUROC (bootstrap interval once
  both classes have enough cases), calibration;
- drift.py: each week's score and input-property distributions against the model card's reference
  (PSI and a KS test);
- report.py: the evaluation report folder (PNG figures, an HTML page, metrics.json);
- seismometer.py: the export seismometer 0.5 loads.

Only records from the domain come in (Prediction, ImageProperties, references): the store reads them
and validation.py wires them here.
"""
