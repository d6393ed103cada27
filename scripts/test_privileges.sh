#!/usr/bin/env bash
# Holds a fresh install to the privileges allow-list, tests/privileges.allow: every function
# of the extension with its SECURITY DEFINER flag and the roles that may EXECUTE it, and
# every table, view and sequence with the privileges each role holds (the owner left out).
# A function or grant that is not listed, or listed and gone, fails.
#   scripts/test_privileges.sh PORT           check
#   scripts/test_privileges.sh PORT --write   rewrite the list (review the diff!)
set -euo pipefail
cd "$(dirname "$0")/.."
PORT=${1:?port of a running test cluster}
PSQL=(psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PORT" -U postgres)
"${PSQL[@]}" -d postgres -c "set client_min_messages = warning" -c "drop database if exists privileges_check" -c "create database privileges_check" >/dev/null
"${PSQL[@]}" -d privileges_check -c "create extension pg_entitlements" >/dev/null
actual=$("${PSQL[@]}" -d privileges_check -At <<'SQL'
with ext as (select e.oid from pg_extension e where e.extname = 'pg_entitlements'),
members as (
    select d.classid, d.objid from pg_depend d, ext
     where d.refclassid = 'pg_extension'::regclass and d.refobjid = ext.oid and d.deptype = 'e'),
fns as (
    select p.oid::regprocedure::text as name, p.prosecdef, p.proowner as owner,
           coalesce(p.proacl, acldefault('f'::"char", p.proowner)) as acl
      from pg_proc p join members m on m.classid = 'pg_proc'::regclass and m.objid = p.oid),
rels as (
    select c.oid::regclass::text as name, c.relkind, c.relowner as owner,
           coalesce(c.relacl, acldefault((case when c.relkind = 'S' then 's' else 'r' end)::"char", c.relowner)) as acl
      from pg_class c join members m on m.classid = 'pg_class'::regclass and m.objid = c.oid
     where c.relkind in ('r', 'p', 'v', 'S')),
grantees as (
    select 'function ' || f.name || case when f.prosecdef then ' [definer]' else '' end as object,
           case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end as grantee,
           a.privilege_type as priv
      from fns f cross join lateral aclexplode(f.acl) a
     where a.grantee <> f.owner
    union all
    select case r.relkind when 'S' then 'sequence ' else 'table ' end || r.name,
           case when a.grantee = 0 then 'PUBLIC' else a.grantee::regrole::text end, a.privilege_type
      from rels r cross join lateral aclexplode(r.acl) a
     where a.grantee <> r.owner)
select o.object || ': ' || coalesce(
         (select string_agg(g.grantee || '(' || g.privs || ')', ' ' order by g.grantee)
            from (select grantee, string_agg(lower(priv), ',' order by priv) as privs
                    from grantees x where x.object = o.object group by grantee) g), 'owner only')
  from (select 'function ' || name || case when prosecdef then ' [definer]' else '' end as object from fns
        union select case relkind when 'S' then 'sequence ' else 'table ' end || name from rels) o
 order by 1;
SQL
)
"${PSQL[@]}" -d postgres -c "drop database privileges_check" >/dev/null
if [ "${2:-}" = "--write" ]; then
    { echo "# Privileges allow-list: every object of the extension, its SECURITY DEFINER flag, and who"
      echo "# may use it (the owner left out). Checked by scripts/test_privileges.sh in make test."
      echo "# Regenerate with scripts/test_privileges.sh PORT --write and review every changed line."
      echo "$actual"; } > tests/privileges.allow
    echo "wrote tests/privileges.allow ($(echo "$actual" | wc -l) objects)"
    exit 0
fi
if ! diff -u <(grep -v '^#' tests/privileges.allow) <(echo "$actual"); then
    echo "privileges differ from tests/privileges.allow (- listed, + installed)" >&2
    exit 1
fi
echo "privileges: $(echo "$actual" | wc -l) objects match tests/privileges.allow"
