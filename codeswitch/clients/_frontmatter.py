"""SKILL.md front matter: the YAML block between ``---`` lines, read without a YAML library
(top-level ``key: value`` scalars, quoted strings, ``>``/``|`` block scalars; nested blocks
are kept as raw text), and the checks Anthropic's skill-creator applies
(anthropics/skills ``skills/skill-creator/scripts/quick_validate.py``): ``name`` is required,
kebab-case, at most 64 characters; ``description`` is required, at most 1024 characters.
"""

from __future__ import annotations

import json
import re

from codeswitch.clients._errors import SkillValidationError

__all__ = ["SKILL_NAME_RE", "parse_front_matter", "validate_skill_md"]

SKILL_NAME_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_KEY = re.compile(r"^([A-Za-z0-9_-]+)\s*:(?:\s+|$)(.*)$")


def _scalar(raw: str) -> str:
    raw = raw.strip()
    if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
        try:
            return str(json.loads(raw))
        except ValueError:
            return raw[1:-1]
    if raw.startswith("'") and raw.endswith("'") and len(raw) >= 2:
        return raw[1:-1].replace("''", "'")
    return re.sub(r"\s+#.*$", "", raw)


def parse_front_matter(text: str) -> dict[str, str]:
    lines = text.lstrip("\ufeff").splitlines()
    if not lines or lines[0].strip() != "---":
        raise SkillValidationError("SKILL.md has no front matter (it must start with ---)")
    try:
        end = next(i for i in range(1, len(lines)) if lines[i].strip() in ("---", "..."))
    except StopIteration:
        raise SkillValidationError("SKILL.md front matter is not closed with ---") from None
    body = lines[1:end]
    out: dict[str, str] = {}
    i = 0
    while i < len(body):
        line = body[i]
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _KEY.match(line)
        if not match or line[0] in " \t":
            raise SkillValidationError(f"SKILL.md front matter: cannot read line {line!r}")
        key, value = match.group(1), match.group(2)
        block: list[str] = []
        while i < len(body) and (not body[i].strip() or body[i][0] in " \t"):
            block.append(body[i])
            i += 1
        while block and not block[-1].strip():
            block.pop()
        indent = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
        lines_ = [b[indent:] for b in block]
        head = value.strip()
        if head[:1] in ("|", ">"):
            out[key] = ("\n" if head[0] == "|" else " ").join(lines_).strip()
        elif head:
            out[key] = _scalar(" ".join([head, *(b.strip() for b in lines_)]))
        else:
            out[key] = "\n".join(lines_)
    return out


def validate_skill_md(text: str) -> tuple[str, str]:
    """(name, description) of a valid SKILL.md; SkillValidationError otherwise."""
    meta = parse_front_matter(text)
    name = meta.get("name", "").strip()
    description = meta.get("description", "").strip()
    if not name:
        raise SkillValidationError("SKILL.md front matter has no 'name'")
    if not SKILL_NAME_RE.match(name) or len(name) > 64:
        raise SkillValidationError(
            f"SKILL.md name {name!r} must be kebab-case (a-z, 0-9, -) and at most 64 characters")
    if not description:
        raise SkillValidationError(f"SKILL.md of {name!r} has no 'description'")
    if len(description) > 1024:
        raise SkillValidationError(f"SKILL.md description of {name!r} is over 1024 characters")
    return name, description
