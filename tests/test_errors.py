"""dassl_ext.errors.first_line: the part of a long library error that goes into a sentence."""

from dassl_ext.errors import first_line


def test_first_line_keeps_the_first_line_cut_at_the_limit():
    e = RuntimeError("\n  Error(s) in loading state_dict:\n\tsize mismatch for x\n")
    assert first_line(e) == "Error(s) in loading state_dict:"
    assert first_line(ValueError("x" * 500)) == "x" * 160
    assert first_line(ValueError("abcdef"), 3) == "abc"
    assert first_line(ValueError("y" * 500), None) == "y" * 500
    assert first_line(EOFError()) == ""
