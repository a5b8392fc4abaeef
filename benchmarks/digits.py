"""The same CNN written for Keras 3 and for tf_keras, trained by raytrain on real data.

    python benchmarks/digits.py            # prints a table, writes benchmarks/results/digits-<date>.json

scikit-learn's digits (1,797 handwritten 8x8 digits, 10 classes) are split once into
1,437 samples to train on and 360 held out (stratified, seed 0) and written as HDF5. For
each of 3 seeds, ``raytrain train --local`` trains the same small CNN written with
``import keras`` (trained on JAX) and with ``import tf_keras as keras`` (TensorFlow), and
``raytrain evaluate`` measures it on the held-out file. The bar: the two frameworks' mean
held-out accuracies within 1.5 points.
"""

import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SEEDS = (0, 1, 2)
EPOCHS = 30
MODEL = '''
import {import_line}


def build(input_shape, num_classes):
    layers = keras.layers
    return keras.Sequential([
        keras.Input(input_shape),
        layers.Conv2D(32, 3, padding="same", activation="relu"),
        layers.MaxPooling2D(),
        layers.Conv2D(64, 3, padding="same", activation="relu"),
        layers.GlobalAveragePooling2D(),
        layers.Dense(64, activation="relu"),
        layers.Dense(num_classes, activation="softmax"),
    ])
'''
IMPORTS = {"keras": "keras", "tf_keras": "tf_keras as keras"}


def write_data(folder: str) -> tuple[str, str]:
    import h5py
    import numpy as np
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype(np.float32)  # 0-16 ink levels to [0, 1]
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=360, stratify=digits.target,
                                                        random_state=0)
    paths = []
    for name, xs, ys in (("train", x_train, y_train), ("test", x_test, y_test)):
        path = os.path.join(folder, f"digits-{name}.h5")
        with h5py.File(path, "w") as f:
            f.create_dataset("X", data=xs)
            f.create_dataset("Y", data=ys.astype(np.int64))
        paths.append(path)
    return paths[0], paths[1]


def raytrain(*args: str, cwd: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "raytrain", *args], cwd=cwd, capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    if proc.returncode:
        raise RuntimeError(f"raytrain {args[0]} failed: {proc.stderr.strip().splitlines()[-1:]}")


def main() -> None:
    folder = tempfile.mkdtemp(prefix="raytrain-digits-")
    train, test = write_data(folder)
    rows = []
    for framework, line in IMPORTS.items():
        builder = os.path.join(folder, f"cnn_{framework}.py")
        with open(builder, "w") as f:
            f.write(MODEL.format(import_line=line))
        for seed in SEEDS:
            name = f"{framework}-{seed}"
            raytrain("train", "--data", train, "--model", f"{builder}:build", "--local", "--epochs", str(EPOCHS),
                     "--batch-size", "32", "--validation-ratio", "0.1", "--seed", str(seed), "--learning-rate", "0.003",
                     "--name", name, "--storage-path", os.path.join(folder, "runs"), cwd=folder)
            run = os.path.join(folder, "runs", name)
            raytrain("evaluate", run, "--data", test, cwd=folder)
            with open(os.path.join(run, "evaluations.jsonl")) as f:
                accuracy = json.loads(f.read().splitlines()[-1])["metrics"]["accuracy"]
            rows.append({"framework": framework, "seed": seed, "held_out_accuracy": accuracy})
            print(f"{name}: held-out accuracy {accuracy:.4f}", file=sys.stderr, flush=True)
    means = {fw: statistics.mean(r["held_out_accuracy"] for r in rows if r["framework"] == fw) for fw in IMPORTS}
    gap = 100 * abs(means["keras"] - means["tf_keras"])
    result = {"date": datetime.date.today().isoformat(), "machine": {"cpus": os.cpu_count()}, "epochs": EPOCHS,
              "train_samples": 1437, "held_out_samples": 360, "rows": rows, "means": means, "gap_points": gap,
              "bar": {"bar": "mean held-out accuracies within 1.5 points", "value": gap, "met": gap <= 1.5}}
    out = os.path.join(HERE, "results", f"digits-{result['date']}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(render(result))
    print(f"\nresults: {out}")


def render(result: dict) -> str:
    lines = [f"digits, {result['date']}: the same CNN in Keras 3 (JAX) and tf_keras (TensorFlow), raytrain --local, "
             f"{result['epochs']} epochs, {result['train_samples']} samples to train on, "
             f"{result['held_out_samples']} held out",
             "", "| framework | " + " | ".join(f"seed {s}" for s in SEEDS) + " | mean |", "|---|" + "---:|" * 4]
    for fw in IMPORTS:
        accs = [r["held_out_accuracy"] for r in result["rows"] if r["framework"] == fw]
        lines.append(f"| {fw} | " + " | ".join(f"{100 * a:.1f}%" for a in accs)
                     + f" | {100 * result['means'][fw]:.1f}% |")
    b = result["bar"]
    lines += ["", f"{b['bar']}: {b['value']:.2f} points, {'met' if b['met'] else 'NOT met'}"]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
