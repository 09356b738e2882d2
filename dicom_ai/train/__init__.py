"""train: reproducible demo models from synthetic data (no patient data, no downloads).

`phantoms` draws synthetic chest radiographs; `chest_demo.train_chest_demo(out_dir, seed, quick)`
trains and documents models/chest-xray-demo; `engine.fit` is the generic, resumable training loop
and `evaluate` the held-out metrics (AUROC with CIs, operating points, calibration, pointing game).
Kept free of imports so that worker processes generating phantoms start fast.
"""
