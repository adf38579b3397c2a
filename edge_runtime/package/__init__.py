"""Model packages: the manifest contract, signing, and verified loading."""

from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME, InputSpec, Manifest, TensorSpec
from edge_runtime.package.signing import TrustStore, generate_keypair, load_private_key, load_public_key
from edge_runtime.package.store import (
    ARCHIVE_SUFFIX,
    Package,
    load_package,
    pack_archive,
    sign_package,
    unpack_archive,
    write_package,
)

__all__ = [
    "ARCHIVE_SUFFIX",
    "MANIFEST_NAME",
    "SIGNATURE_NAME",
    "InputSpec",
    "Manifest",
    "Package",
    "TensorSpec",
    "TrustStore",
    "generate_keypair",
    "load_package",
    "load_private_key",
    "load_public_key",
    "pack_archive",
    "sign_package",
    "unpack_archive",
    "write_package",
]
