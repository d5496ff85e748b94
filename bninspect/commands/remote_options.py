"""The options of the commands that read MODEL or PATH: a local path or a URL (`https://`,
`s3://`, `gs://`, `hf://`, any installed fsspec protocol), `--storage-option` and `--download`.

Arguments are typed `str`, not Path: Path("s3://bucket/key") would drop a slash.

Layer: commands (the layer order is written in tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from bninspect.commands.common import fail

URL_HELP = (" A URL (https://, s3://, gs://, hf://; needs `pip install 'bninspect[remote]'`) is read in place "
            "with range requests.")
StorageOption = typer.Option(None, "--storage-option", metavar="KEY=VALUE",
                             help="For URLs: an fsspec storage option of the backend, repeatable, e.g. "
                                  "endpoint_url=http://localhost:9000, anon=true, profile=dev (VALUE is "
                                  "JSON when it parses). Credentials and endpoints also come from the "
                                  "backend's usual environment variables (AWS_ENDPOINT_URL, HF_TOKEN, ...).")
DownloadOption = typer.Option(False, "--download",
                              help="For URLs on a server without range support: download the whole file to a "
                                   "temporary directory instead of failing.")


def location(text: str) -> str:
    """A MODEL/PATH argument as loaders take it: a URL unchanged, a local path as Path spells it."""
    from bninspect.loaders.remote import is_url

    return text if is_url(text) else str(Path(text))


def remote_options(storage_options: Optional[List[str]], download: bool):
    """RemoteOptions from the command line; a malformed KEY=VALUE is a one-line usage error."""
    from bninspect.errors import UsageProblem
    from bninspect.loaders.remote import RemoteOptions, parse_storage_options

    try:
        return RemoteOptions(parse_storage_options(storage_options), download)
    except UsageProblem as error:
        fail(str(error))
