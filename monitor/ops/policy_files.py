"""Policy files: YAML on disk, validated exactly as the worker validates the `policies` topic.

A refused file names the file, the field (a JSON pointer) and the reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from monitor.contract import ContractError, validate
from monitor.engine import Policy, PolicyError, parse_policy


def load_policy_file(path: Path) -> tuple[dict[str, Any], Policy]:
    """The document (as it goes on the topic) and the parsed policy; PolicyError if refused."""
    source = str(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(source, "", f"cannot read: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PolicyError(source, "", f"not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    try:
        validate("policies", doc)
    except ContractError as e:
        raise PolicyError(source, e.path, e.reason) from None
    return doc, parse_policy(doc, source)
