"""`manage.py myko_typegen` on the test settings (the demo's items and the test app's): what it
prints, what `--output` writes, and its errors. tests/system/test_typegen_tsc.py compiles the
output with tsc."""

from __future__ import annotations

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError


def run(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("myko_typegen", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_without_arguments_it_prints_every_item_type_and_operation():
    out, _ = run()
    for declaration in (
        "export type Gadget = {",  # test app
        "export type Target = {",  # demo app
        "export type Legacy = {",  # register(name="Legacy") of LegacyRow
        "export class GetGadgetsByQuery {",
        "export class CountAllTargets {",
        "export class MakeGadgets {",  # @command
        "export class GetGadgetsByMinCount {",  # @query
        "export class GadgetLabels {",  # @report
        "export class RenameTarget {",  # the demo's @command
    ):
        assert declaration in out
    assert 'static readonly queryItemType = "Gadget" as const;' in out


def test_fields_kept_off_the_wire_are_not_in_the_types():
    out, _ = run()
    account = out[out.index("export type Account = {") :]
    account = account[: account.index("};")]
    assert "name: string;" in account
    for hidden in ("apiToken", "avatar", "referrer"):
        assert hidden not in account
    badge = out[out.index("export type Badge = {") :]
    assert badge[: badge.index("};")].split("\n")[1:-1] == [
        "  id: string;",
        "  label: string;",
        "  level: number;",
    ]


def test_the_output_is_the_same_each_time():
    assert run()[0] == run()[0]


def test_output_writes_the_same_module_to_a_file(tmp_path):
    printed, _ = run()
    target = tmp_path / "myko-types.ts"
    out, err = run("--output", str(target))
    assert out == ""
    assert target.read_text(encoding="utf-8") == printed
    assert f"Wrote {target}" in err
    # written again over an existing file, with no temporary file left behind
    run("--output", str(target))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["myko-types.ts"]


def test_output_into_a_missing_folder_is_refused(tmp_path):
    with pytest.raises(CommandError, match=r"folder .*nope does not exist"):
        run("--output", str(tmp_path / "nope" / "types.ts"))


def test_output_naming_a_folder_is_refused(tmp_path):
    with pytest.raises(CommandError, match="is a folder; give a file name"):
        run("--output", str(tmp_path))
