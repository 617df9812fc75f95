"""The COUP paper's analyses as runnable experiments: `python -m experiments.<name> --help`.

toy_label_flip   Sec. 5.3.2 / Fig. 3b: label-flip probability vs guidance scale on a 1-D two-Gaussian toy
confidence_path  Fig. 2a: p(y_true | x_t) and p(y_adv | x_t) along the purification path
sweeps           Fig. 4a / Sec. 5.4: robust accuracy vs t* and vs guidance scale (resumable)
purified_images  Fig. 5/6: clean / adversarial / DiffPure / reverse-only / COUP image grid
speed            Table 4: purification time per image
salt_pepper      App. E.1: accuracy under salt-and-pepper noise (resumable)

Each writes a PNG and the numbers behind it (CSV/JSON) to --out (default results/experiments/<name>/).
"""
