#!/usr/bin/env python3
"""Copy the current definitions of SQL functions from sql/**/*.sql into an upgrade script.

    scripts/upgrade_sync.py sql/pg_entitlements--A--B.sql NAME [NAME ...]

NAME is a function name (entitlements.NAME). Every definition of it in the install
scripts (each overload) replaces the `create or replace function` block of the same
signature line in the upgrade script, or is appended at the end of its section
"-- Synced from the install scripts" (created before the privileges section) when the
upgrade script has none. A body ends on the first line ending in `$$;` (`end;` for
`begin atomic`); a COMMENT right after the definition comes along. scripts/test_upgrade.sh then proves upgraded == fresh install.

    scripts/upgrade_sync.py sql/pg_entitlements--A--B.sql --files sql/x/new.sql [...]

copies whole install files that are new in B (tables, policies and functions together)
between the lines `-- BEGIN copy of FILE` and `-- END copy of FILE` of the upgrade script,
added before the privileges section the first time.
"""
import pathlib
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MARK = "-- Synced from the install scripts (scripts/upgrade_sync.py) "


def blocks(text, name):
    """(signature line, block) for each definition of entitlements.name in text."""
    lines = text.split("\n")
    pat = re.compile(r"^create (or replace )?function entitlements\." + re.escape(name) + r"\(")
    out = []
    for i, line in enumerate(lines):
        if pat.match(line):
            atomic = False
            for j in range(i, len(lines)):
                if lines[j].strip().lower() == "begin atomic":
                    atomic = True
                if lines[j].rstrip().endswith("$$;") or (atomic and lines[j] == "end;"):
                    break
            else:
                sys.exit(f"no end of the body of {name} (line {i + 1})")
            sig = re.sub(r"^create (or replace )?", "", line)
            # The COMMENT right after the definition comes along (it ends with a `;` line).
            k = j
            if k + 1 < len(lines) and lines[k + 1].startswith("comment on function entitlements." + name + "("):
                k += 1
                while not lines[k].rstrip().endswith(";"):
                    k += 1
            body = "\n".join(lines[i : k + 1])
            body = re.sub(r"^create (or replace )?function", "create or replace function", body)
            out.append((sig, body, i, k))
    return out


def copy_files(upgrade, files):
    text = upgrade.read_text()
    for f in files:
        begin, end = f"-- BEGIN copy of {f}\n", f"-- END copy of {f}\n"
        block = begin + (ROOT / f).read_text() + end
        if begin in text:
            i, j = text.index(begin), text.index(end) + len(end)
            text = text[:i] + block + text[j:]
            print(f"replaced the copy of {f}")
        else:
            at = text.index("-- Privileges (sql/security/privileges.sql)")
            text = text[:at] + block + "\n" + text[at:]
            print(f"added a copy of {f}")
    upgrade.write_text(text)


def main():
    upgrade = pathlib.Path(sys.argv[1])
    if sys.argv[2:3] == ["--files"]:
        return copy_files(upgrade, sys.argv[3:])
    names = sys.argv[2:]
    sources = [p for p in sorted((ROOT / "sql").rglob("*.sql")) if "--" not in p.name]
    text = upgrade.read_text()
    for name in names:
        found = [b for p in sources for b in blocks(p.read_text(), name)]
        if not found:
            sys.exit(f"entitlements.{name} is not defined in sql/")
        for sig, body, _, _ in found:
            current = [b for b in blocks(text, name) if b[0] == sig]
            lines = text.split("\n")
            if current:
                _, _, i, j = current[0]
                lines[i : j + 1] = body.split("\n")
                text = "\n".join(lines)
                print(f"replaced {sig.split('(')[0]}")
            else:
                if MARK not in text:
                    at = text.index("-- Privileges (sql/security/privileges.sql)")
                    text = text[:at] + MARK + "-" * 10 + "\n\n" + text[at:]
                at = text.index("-- Privileges (sql/security/privileges.sql)")
                text = text[:at] + body + "\n\n" + text[at:]
                print(f"appended {sig.split('(')[0]}")
    upgrade.write_text(text)


if __name__ == "__main__":
    main()
