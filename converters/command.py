"""`edge-runtime convert`: convert and quantize a model into a (signed) package for a device profile."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pydantic import ValidationError

from edge_runtime.errors import ConversionError, first_validation_error


def _floats(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.replace(",", " ").split())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from exc


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a shape like 1,3,224,224, got {text!r}") from exc
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"shape dimensions must be positive: {text!r}")
    return dims


def _named_shape(text: str) -> tuple[str | None, tuple[int, ...]]:
    """``NAME=1,576`` or a bare ``1,576`` (the first input)."""
    name, sep, rest = text.rpartition("=")
    if sep and not name:
        raise argparse.ArgumentTypeError(f"expected NAME=SHAPE or SHAPE, got {text!r}")
    return (name or None), _shape(rest)


def _input_kind(text: str) -> tuple[str | None, str]:
    name, _, kind = text.rpartition("=")
    if kind not in ("image", "tensor"):
        raise argparse.ArgumentTypeError(f"expected image, tensor, NAME=image or NAME=tensor, got {text!r}")
    return (name or None), kind


def _state(text: str) -> tuple[str, str]:
    inp, sep, out = text.partition(":")
    if not sep or not inp or not out:
        raise argparse.ArgumentTypeError(f"expected INPUT:OUTPUT (the output fed back into the input), got {text!r}")
    return inp, out


def _const(text: str) -> tuple[str, tuple[float, ...]]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE (e.g. sample_rate=16000), got {text!r}")
    return name, _floats(value)


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="model: .onnx, .keras/.h5, SavedModel dir, .tflite, .pkl/.joblib, .pt, "
                   "or models:/NAME@ALIAS | models:/NAME/VERSION from an MLflow registry")
    p.add_argument("--mlflow-uri", metavar="URI", help="MLflow tracking URI for a models:/ source "
                   "(default: $MLFLOW_TRACKING_URI; needs the [mlflow] extra)")
    p.add_argument("--profile", required=True, help="device profile name (see `edge-runtime profiles list`) or YAML")
    p.add_argument("--calibration", required=True, type=Path, help="image folder, video file, or .npy/.npz arrays")
    p.add_argument("--validation", type=Path, help="held-back data (default: every 5th calibration sample)")
    p.add_argument("--out", required=True, type=Path, help="package directory to write")
    p.add_argument("--name", help="package name (default: source file name)")
    p.add_argument("--version", default="1.0.0", help="package version, semver (default 1.0.0)")
    p.add_argument("--sign-key", type=Path, help="Ed25519 private key (from `edge-runtime keygen`)")
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="passphrase of an encrypted --sign-key (first line; or $EDGE_RUNTIME_KEY_PASSPHRASE)")
    p.add_argument("--format", choices=["tflite", "onnx"], help="target format (default: the profile's preferred)")
    p.add_argument("--precision", choices=["int8", "float32", "float16"], default="int8", help="default int8")
    p.add_argument("--labels", type=Path, help="class labels file, one per line")
    p.add_argument("--task", choices=["classification", "detection", "raw"], help="default: guessed from outputs")
    p.add_argument("--input-kind", type=_input_kind, action="append", metavar="[NAME=]image|tensor",
                   help="image or tensor (default: image for one 4-D 1/3-channel input); NAME= for one input")
    p.add_argument("--input-shape", type=_named_shape, action="append", metavar="[NAME=]SHAPE",
                   help="static input shape, e.g. 1,3,224,224 (first input) or state=2,1,128; repeatable")
    p.add_argument("--state", type=_state, action="append", metavar="INPUT:OUTPUT",
                   help="recurrent state: OUTPUT is fed back into INPUT on the next call; repeatable")
    p.add_argument("--const", type=_const, action="append", metavar="NAME=VALUE",
                   help="constant input folded into the graph, e.g. sample_rate=16000; repeatable")
    p.add_argument("--window-hop", type=int, help="sensor streams: samples between windows (default: window size)")
    p.add_argument("--mean", type=_floats, help="normalisation mean, pixel units, e.g. 127.5 or 123.7,116.3,103.5")
    p.add_argument("--std", type=_floats, help="normalisation std, pixel units (image default 255: [0, 1])")
    p.add_argument("--color-order", choices=["RGB", "BGR", "GRAY"], help="the model's colour order (default RGB)")
    p.add_argument("--layout", choices=["NHWC", "NCHW"], help="image layout (default: guessed from the shape)")
    p.add_argument("--resize", choices=["stretch", "letterbox", "center_crop"], default="stretch")
    p.add_argument("--pad-value", type=int, help="letterbox padding pixel value 0-255 (default 114)")
    p.add_argument("--decoding", type=Path, help="detection decoding file, YAML or JSON: SSD or YOLO fields")
    p.add_argument("--anchors", type=Path, help="SSD anchors .npy, float [N, 4] cx,cy,w,h (stored as anchors.npy)")
    p.add_argument("--calibration-method", choices=["minmax", "entropy", "percentile"], help="default: profile's")
    p.add_argument("--max-samples", type=int, help="calibration samples to use (default: profile's)")
    p.add_argument("--max-float-nodes", type=int, default=8, help="most nodes the accuracy guard may keep in float")
    p.add_argument("--force", action="store_true", help="replace an existing --out directory")
    p.add_argument("--archive", type=Path, help="also write the package as one .erpkg file")
    pr = p.add_argument_group("pruning (PyTorch sources; needs the [prune] extra)")
    pr.add_argument("--prune", type=float, metavar="RATIO", help="remove this share of channels first, e.g. 0.3")
    pr.add_argument("--prune-importance", choices=["l1", "group"], help="channel importance (default l1)")
    pr.add_argument("--fine-tune-epochs", type=int, help="built-in fine-tune on the labelled calibration data "
                    "(default 3; 0: none)")
    pr.add_argument("--train-cmd", metavar="CMD", help="fine-tune with your command instead: it gets {data} "
                    "{model} {output} (also EDGE_TRAIN_DATA/_MODEL/_OUTPUT)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")


def _detection(args: argparse.Namespace) -> dict:
    """``decoding`` and ``extra_files`` from --decoding/--anchors, read and checked before any model is loaded."""
    from converters.decoding_file import ANCHORS_FILE, load_anchors, load_decoding

    if args.decoding is None:
        if args.anchors is not None:
            raise ConversionError("--anchors needs --decoding FILE with an SSD decoding")
        return {}
    if not args.decoding.is_file():
        raise ConversionError(f"--decoding {args.decoding}: no such file")
    decoding = load_decoding(args.decoding, with_anchors=args.anchors is not None)
    if args.anchors is None:
        return {"decoding": decoding}
    if not args.anchors.is_file():
        raise ConversionError(f"--anchors {args.anchors}: no such file")
    return {"decoding": decoding, "extra_files": {ANCHORS_FILE: load_anchors(args.anchors)}}


def _inputs(args: argparse.Namespace) -> dict:
    """--input-shape, --input-kind, --state and --const as the options' fields; a name given twice is refused."""
    from edge_runtime.package.manifest import StateBinding

    def by_name(pairs, flag: str) -> tuple[object, dict]:  # type: ignore[no-untyped-def]
        bare, named = None, {}
        for name, value in pairs or ():
            if name is None:
                if bare is not None:
                    raise ConversionError(f"{flag} without a name is given twice: name the inputs (NAME=...)")
                bare = value
            elif name in named:
                raise ConversionError(f"{flag} {name}=... is given twice")
            else:
                named[name] = value
        return bare, named

    shape, shapes = by_name(args.input_shape, "--input-shape")
    kind, kinds = by_name(args.input_kind, "--input-kind")
    _, consts = by_name(args.const, "--const")
    state = tuple(StateBinding(input=i, output=o) for i, o in args.state or ())
    return {"input_shape": shape, "input_shapes": shapes, "input_kind": kind, "input_kinds": kinds,
            "constants": consts, "state": state}  # fmt: skip


def _pruning(args: argparse.Namespace) -> dict:
    """--prune and its companions as the options' ``prune`` field; a companion without --prune is refused."""
    extra = {"importance": args.prune_importance, "fine_tune_epochs": args.fine_tune_epochs,
             "train_cmd": args.train_cmd}  # fmt: skip
    given = {k: v for k, v in extra.items() if v is not None}
    if args.prune is None:
        if given:
            raise ConversionError(f"--{next(iter(given)).replace('_', '-')} applies with --prune RATIO only")
        return {}
    if not 0 < args.prune < 1:
        raise ConversionError(f"--prune takes a share of channels between 0 and 1 (e.g. 0.3), got {args.prune}")
    from converters.optimize import PruneOptions

    try:
        return {"prune": PruneOptions(ratio=args.prune, **given)}
    except ValidationError as exc:
        where, msg = first_validation_error(exc)
        raise ConversionError(f"--{where.replace('_', '-')}: {msg}") from exc


def _options(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from converters.pipeline import ConvertOptions

    fields = {
        k: getattr(args, k)
        for k in (
            "source", "profile", "calibration", "validation", "out", "name", "version", "sign_key", "format",
            "precision", "labels", "task", "mean", "std", "color_order", "layout", "window_hop",
            "resize", "calibration_method", "max_samples", "force", "archive", "max_float_nodes", "pad_value",
            "mlflow_uri",
        )
    }  # fmt: skip
    fields.update(_detection(args))
    fields.update(_pruning(args))
    fields.update(_inputs(args))
    given = {"sign_key": args.sign_key, "passphrase_file": args.passphrase_file, "decoding": args.decoding,
             "anchors": args.anchors}  # fmt: skip
    fields["given_files"] = {k: v for k, v in given.items() if v is not None}
    if args.sign_key is not None:  # loaded (and its passphrase checked) before any conversion work
        from edge_runtime.package.signing import load_private_key, read_passphrase

        fields["sign_key"] = load_private_key(args.sign_key, read_passphrase(args.passphrase_file))
    try:
        return ConvertOptions(**fields)
    except ValidationError as exc:
        where, msg = first_validation_error(exc)
        flag = f"--{where.replace('_', '-')}: " if where else ""
        raise ConversionError(f"{flag}{msg}") from exc


def run(args: argparse.Namespace) -> int:
    from converters.pipeline import convert
    from edge_runtime.commands.package_cmds import summary
    from edge_runtime.package.signing import key_id

    opts = _options(args)
    pkg = convert(opts, progress=(lambda s: None) if args.quiet else None)
    m = pkg.manifest
    signer = key_id(opts.sign_key.public_key()) if opts.sign_key is not None else None  # type: ignore[union-attr]
    print(summary(m, pkg.root, signer))
    if args.archive:
        print(f"archive   {args.archive}")
    if m.accuracy is not None and not m.accuracy.passed:
        print("warning: the package misses the accuracy budget", file=sys.stderr)
    return 0
