"""Model packages: the manifest contract, signing, and verified loading."""

from edge_runtime.package.manifest import MANIFEST_NAME, SIGNATURE_NAME, InputSpec, Manifest, TensorSpec
from edge_runtime.package.signing import (
    OPERATOR,
    RELEASE,
    TrustConfig,
    TrustStore,
    generate_keypair,
    load_private_key,
    load_public_key,
    read_passphrase,
    sign_bytes,
    verify_bytes,
)
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
    "OPERATOR",
    "RELEASE",
    "SIGNATURE_NAME",
    "InputSpec",
    "Manifest",
    "Package",
    "TensorSpec",
    "TrustConfig",
    "TrustStore",
    "generate_keypair",
    "load_package",
    "load_private_key",
    "load_public_key",
    "pack_archive",
    "read_passphrase",
    "sign_bytes",
    "sign_package",
    "unpack_archive",
    "verify_bytes",
    "write_package",
]
