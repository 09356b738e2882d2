"""train: reproducible demo models from synthetic data (no patient data, no downloads).

`phantoms` draws synthetic chest radiographs; `chest_demo.train_chest_demo(out_dir, seed, quick)`
trains and documents models/chest-xray-demo. Kept free of imports so that worker processes
generating phantoms start fast.
"""
