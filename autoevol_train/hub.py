"""Push a stage's output to the Hugging Face Hub with huggingface_hub's own client: evolve's dataset, eval's results.

Why this is so small: `HfApi.create_repo` / `create_branch` / `upload_folder` already do the work (upload modes,
LFS, commits); this module only decides when (never unless a `hub` section is configured), with which token
(`HF_TOKEN` from the environment, nothing else: no token file, no config key, so a token can never end up in a
run directory, a config.yaml or a log) and turns the client's failures into one-line `EndpointError`s.
`HF_ENDPOINT` points the client at another Hub (tests use a local one). Training pushes the model through TRL's
own `push_to_hub` / `hub_model_id` recipe fields instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from autoevol_train.config import StrictModel
from autoevol_train.errors import EndpointError

__all__ = ["HubTarget", "check_can_push", "push_folder", "folder_name"]


class HubTarget(StrictModel):
    """Where to push: a Hub repository (created if missing) and branch. Nothing is pushed without this section."""

    repo_id: str = Field(pattern=r"^[A-Za-z0-9][\w.-]*/[\w.-]+$", description="namespace/name on the Hub")
    private: bool = Field(True, description="create the repository private (an existing one keeps its visibility)")
    revision: str | None = Field(None, description="branch to push to (created from main if missing); default main")


def check_can_push(target: HubTarget | None) -> str | None:
    """The token for `target` (None when nothing is to be pushed). Stages call it before their work, so a
    missing token fails in a second, not after hours of evolution."""
    from huggingface_hub import constants

    if target is None:
        return None
    token = os.environ.get("HF_TOKEN")
    if not token:
        raise EndpointError(f"hub.repo_id {target.repo_id}: set HF_TOKEN in the environment to push "
                            "(the token is read from there only)")
    if constants.HF_HUB_OFFLINE:
        raise EndpointError(f"hub.repo_id {target.repo_id}: HF_HUB_OFFLINE is set; unset it to push")
    return token


def push_folder(folder: Path, target: HubTarget, repo_type: Literal["dataset", "model"], message: str,
                allow_patterns: list[str] | None = None, path_in_repo: str | None = None) -> str:
    """Upload `folder` (only `allow_patterns`, if given) to `target`; returns the commit URL."""
    import httpx2  # huggingface_hub 2's HTTP client: its connection errors are not OSErrors
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=check_can_push(target))
    try:
        api.create_repo(target.repo_id, repo_type=repo_type, private=target.private, exist_ok=True)
        if target.revision:
            api.create_branch(target.repo_id, branch=target.revision, repo_type=repo_type, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=target.repo_id, repo_type=repo_type,
                                   revision=target.revision, commit_message=message,
                                   allow_patterns=allow_patterns, path_in_repo=path_in_repo)
    except (HfHubHTTPError, httpx2.HTTPError, OSError) as exc:
        first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise EndpointError(f"hub push to {repo_type} {target.repo_id}: {first_line}") from None
    return commit.commit_url


def folder_name(label: str) -> str:
    """A label (often a path, e.g. eval's model) as one folder name in a repository."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_.") or "model"
