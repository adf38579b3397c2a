"""Package subcommands: inspect, verify, sign, keygen, pack."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge_runtime.errors import ConfigError
from edge_runtime.package import (
    TrustStore,
    generate_keypair,
    load_package,
    load_private_key,
    pack_archive,
    read_passphrase,
    sign_package,
)
from edge_runtime.package.manifest import Manifest
from edge_runtime.package.signing import RELEASE
from edge_runtime.package.store import manifest_bytes


def add_trust_flags(p: argparse.ArgumentParser) -> None:
    """--trust (release keys) and --allow-unsigned, shared by verify, run and serve."""
    p.add_argument("--trust", "--key", dest="trust", action="append", default=[], metavar="KEY.pub",
                   help="public key (.pub) or folder of them trusted to sign packages (release role); repeatable")
    p.add_argument("--allow-unsigned", action="store_true",
                   help="accept a package without a signature (hashes are still checked)")


def add_passphrase_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--passphrase-file", type=Path, metavar="FILE",
                   help="file whose first line is the private key's passphrase (or set $EDGE_RUNTIME_KEY_PASSPHRASE)")


def trust_from_args(args: argparse.Namespace) -> TrustStore | None:
    """The release-role trust store of --trust, or None when none was given."""
    return TrustStore.from_paths(args.trust, [RELEASE]) if args.trust else None


def private_key_from_args(path: str | Path, args: argparse.Namespace):  # type: ignore[no-untyped-def]
    return load_private_key(path, read_passphrase(getattr(args, "passphrase_file", None)))


def configure(p: argparse.ArgumentParser) -> None:
    command = p.prog.split()[-1]
    if command == "inspect":
        p.add_argument("package", help="package directory or .erpkg archive")
        p.add_argument("--json", action="store_true", help="print the manifest as JSON")
    elif command == "verify":
        p.add_argument("package", help="package directory or .erpkg archive")
        add_trust_flags(p)
        p.add_argument("--emulate", metavar="PROFILE", help="also run the golden set on the profile's emulated CPU")
    elif command == "sign":
        p.add_argument("package", help="package directory")
        p.add_argument("--key", required=True, help="Ed25519 private key (.key)")
        add_passphrase_flag(p)
    elif command == "keygen":
        p.add_argument("--out", required=True, help="path prefix: writes PREFIX.key and PREFIX.pub")
        add_passphrase_flag(p)
    elif command == "pack":
        p.add_argument("package", help="package directory")
        p.add_argument("--out", help="archive path (default: DIR.erpkg)")
        p.add_argument("--sign-key", help="sign the package with this private key before packing")
        add_passphrase_flag(p)
    p.set_defaults(_action=command)


def _fmt_size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def summary(m: Manifest, root: Path, signer: str | None) -> str:
    lines = [
        f"package   {m.name} {m.version} ({m.format}, {m.quantization.precision}) for profile {m.profile}",
        f"location  {root}",
        f"signed    {'by key ' + signer if signer else 'not checked'}",
        f"model     {m.model_file} {_fmt_size(m.file_entry(m.model_file).size)}, "
        f"{len(m.files)} file(s), {_fmt_size(sum(f.size for f in m.files))} in all",
    ]
    for i in m.inputs:
        extra = f" {i.layout} {i.color_order} resize={i.resize}" if i.kind == "image" else ""
        q = f" q(scale={i.quantization.scale[0]:.6g}, zp={i.quantization.zero_point[0]})" if i.quantization else ""
        lines.append(f"input     {i.name} {list(i.shape)} {i.dtype}{extra}{q}")
    for t in m.outputs.tensors:
        lines.append(f"output    {t.name} {list(t.shape)} {t.dtype}")
    labels = f", {len(m.outputs.labels)} labels" if m.outputs.labels else ""
    lines.append(f"task      {m.outputs.task} (decoding: {m.outputs.decoding.type}{labels})")
    q = m.quantization
    lines.append(
        f"quantized {q.method}, calibration {q.calibration_method or '-'} on {q.calibration_samples} samples"
        + (f", remedies: {', '.join(q.remedies)}" if q.remedies else "")
        + (f", float nodes: {len(q.float_nodes)}" if q.float_nodes else "")
    )
    if m.accuracy:
        a = m.accuracy
        parts = [f"{a.samples} held-back samples"]
        if a.top1_agreement is not None:
            parts.append(f"top-1 agreement {a.top1_agreement:.4f}")
        if a.cosine_similarity is not None:
            parts.append(f"cosine {a.cosine_similarity:.4f}")
        if a.max_abs_error is not None:
            parts.append(f"max |err| {a.max_abs_error:.4g}")
        lines.append(f"accuracy  {', '.join(parts)}: {'within budget' if a.passed else 'OVER BUDGET'}")
    if m.golden:
        lines.append(f"golden    {m.golden.count} pairs in {m.golden.file} (atol {m.golden.atol:g})")
    if m.source:
        lines.append(f"source    {m.source.format} {m.source.filename} sha256 {m.source.sha256[:16]}...")
    if m.tools:
        lines.append("tools     " + ", ".join(f"{k} {v}" for k, v in sorted(m.tools.items())))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    action = args._action
    if action == "keygen":
        passphrase = read_passphrase(args.passphrase_file)
        priv, pub = generate_keypair(args.out, passphrase)
        how = "encrypted with the passphrase" if passphrase else "unencrypted: use --passphrase-file to encrypt it"
        print(f"wrote {priv} (private, {how}; keep it secret) and {pub} (copy to devices)")
        return 0
    if action == "sign":
        kid = sign_package(args.package, private_key_from_args(args.key, args))
        print(f"signed {args.package} with key {kid}")
        return 0
    if action == "pack":
        if args.sign_key:
            kid = sign_package(args.package, private_key_from_args(args.sign_key, args))
            print(f"signed {args.package} with key {kid}")
        out = Path(args.out or str(Path(args.package).resolve()) + ".erpkg")
        pack_archive(args.package, out)
        print(f"wrote {out}")
        return 0
    if action == "verify":
        trust = trust_from_args(args)
        if args.trust and not trust:
            raise ConfigError(f"--trust {' '.join(args.trust)}: no public key (.pub) found there")
        pkg = load_package(args.package, trust=trust, allow_unsigned=args.allow_unsigned)
        who = f"signature by trusted key {pkg.signer}" if pkg.signer else "signature not checked (--allow-unsigned)"
        print(f"OK: {pkg.manifest.name} {pkg.manifest.version}: {len(pkg.manifest.files)} file(s) match, {who}")
        if args.emulate:
            from converters.emulate import verify_emulated

            return verify_emulated(pkg, args.emulate)
        return 0
    pkg = load_package(args.package, allow_unsigned=True)  # inspect: shows the manifest, trusts nothing
    if args.json:
        sys.stdout.write(manifest_bytes(pkg.manifest).decode())
    else:
        print(summary(pkg.manifest, pkg.root, pkg.signer))
    return 0
