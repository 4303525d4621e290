"""The supported Ultralytics range is checked at run time."""

import pytest

from yoloprune.errors import UserError
from yoloprune.versions import ULTRALYTICS_MIN, check_ultralytics, parse


def test_version_strings_parse_to_comparable_tuples():
    assert parse("8.4.190") == (8, 4, 190)
    assert parse("8.4.190.dev0") == (8, 4, 190) and parse("8.4.191rc1") == (8, 4, 191)
    assert parse("8.10.0") > parse("8.4.190")


def test_an_older_ultralytics_gets_one_line_naming_the_range():
    check_ultralytics(".".join(map(str, ULTRALYTICS_MIN)))
    check_ultralytics("9.0.0")
    with pytest.raises(UserError, match=r"ultralytics 8\.3\.100 is older .* \(>= 8\.4\."):
        check_ultralytics("8.3.100")
