"""Markup stripping on hand-written wikitext, one construct at a time."""

import pytest

from clara.data.wikitext import strip_wiki_markup


@pytest.mark.parametrize(
    "wikitext, expected",
    [
        ("'''Albedo''' is ''white''.", "Albedo is white."),
        ("A {{IPA|x|{{nested|y}}}} word.", "A word."),
        ("See [[Latin language|Latin]] and [[Greek]]s.", "See Latin and Greeks."),
        ("[[File:X.jpg|thumb|A [[caption]] here]]Text.", "Text."),
        ("Text.[[Category:Physics]]", "Text."),
        ("Fact.<ref name=a>{{cite web|url=x}}</ref> More.<ref name=a/>", "Fact. More."),
        ("Visit [http://example.org the site] or [http://x.org].", "Visit the site or."),
        ("a<!-- hidden -->b", "ab"),
        ("x<br />y <small>z</small>", "xy z"),
        ("Pipe trick [[Paris, Texas|]].", "Pipe trick Paris."),
        ("Before.\n{| class=wikitable\n|-\n| a || {{b}}\n|}\nAfter.", "Before.\n\nAfter."),
        ("Tpl with pipe {{foo|}} end.", "Tpl with pipe end."),
        ("== History ==\nOld.\n== References ==\n* [[Book]]", "History\n\nOld."),
        ("* item one\n# item two", "item one\nitem two"),
        ("A&nbsp;B&ndash;C", "A B–C"),
        ("Unclosed {{template here\n\nNext paragraph.", "Unclosed\n\nNext paragraph."),
    ],
)
def test_strip(wikitext, expected):
    assert strip_wiki_markup(wikitext) == expected
