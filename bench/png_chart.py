"""A bar chart written as a PNG with the Python standard library only (zlib + struct): no matplotlib.

bar_chart(path, title, bars, ...) draws one bar per (label, value) with the value printed above
it and optional dashed target lines; text uses a built-in 3×5 pixel font (upper-case letters,
digits and . / % : - + = < > ( ) and space), scaled up.
"""
import struct
import zlib

_FONT = {  # 3 columns × 5 rows, '#' = ink
    "A": ".#. #.# ### #.# #.#", "B": "##. #.# ##. #.# ##.", "C": ".## #.. #.. #.. .##", "D": "##. #.# #.# #.# ##.",
    "E": "### #.. ##. #.. ###", "F": "### #.. ##. #.. #..", "G": ".## #.. #.# #.# .##", "H": "#.# #.# ### #.# #.#",
    "I": "### .#. .#. .#. ###", "J": "..# ..# ..# #.# .#.", "K": "#.# #.# ##. #.# #.#", "L": "#.. #.. #.. #.. ###",
    "M": "#.# ### ### #.# #.#", "N": "##. #.# #.# #.# #.#", "O": ".#. #.# #.# #.# .#.", "P": "##. #.# ##. #.. #..",
    "Q": ".#. #.# #.# ##. .##", "R": "##. #.# ##. #.# #.#", "S": ".## #.. .#. ..# ##.", "T": "### .#. .#. .#. .#.",
    "U": "#.# #.# #.# #.# ###", "V": "#.# #.# #.# #.# .#.", "W": "#.# #.# ### ### #.#", "X": "#.# #.# .#. #.# #.#",
    "Y": "#.# #.# .#. .#. .#.", "Z": "### ..# .#. #.. ###", "0": "### #.# #.# #.# ###", "1": ".#. ##. .#. .#. ###",
    "2": "##. ..# .#. #.. ###", "3": "##. ..# .#. ..# ##.", "4": "#.# #.# ### ..# ..#", "5": "### #.. ##. ..# ##.",
    "6": ".## #.. ### #.# ###", "7": "### ..# .#. .#. .#.", "8": "### #.# ### #.# ###", "9": "### #.# ### ..# ##.",
    ".": "... ... ... ... .#.", "/": "..# ..# .#. #.. #..", "%": "#.# ..# .#. #.. #.#", ":": "... .#. ... .#. ...",
    "-": "... ... ### ... ...", "=": "... ### ... ### ...", "<": "..# .#. #.. .#. ..#", ">": "#.. .#. ..# .#. #..",
    "+": "... .#. ### .#. ...", "(": ".#. #.. #.. #.. .#.", ")": ".#. ..# ..# ..# .#.", " ": "... ... ... ... ...",
}


def _glyph(ch):
    rows = _FONT.get(ch.upper(), _FONT[" "]).split()
    return [[c == "#" for c in r] for r in rows]


class Canvas:
    def __init__(self, w, h, bg=(255, 255, 255)):
        self.w, self.h = w, h
        self.px = [bytearray(bytes(bg) * w) for _ in range(h)]

    def rect(self, x0, y0, x1, y1, color):
        for y in range(max(0, int(y0)), min(self.h, int(y1))):
            row = self.px[y]
            for x in range(max(0, int(x0)), min(self.w, int(x1))):
                row[3 * x:3 * x + 3] = bytes(color)

    def text(self, x, y, s, color=(0, 0, 0), scale=2, center=False):
        if center:
            x -= (len(s) * 4 - 1) * scale // 2
        for i, ch in enumerate(s):
            for r, bits in enumerate(_glyph(ch)):
                for c, on in enumerate(bits):
                    if on:
                        gx, gy = x + (i * 4 + c) * scale, y + r * scale
                        self.rect(gx, gy, gx + scale, gy + scale, color)

    def save(self, path):
        raw = b"".join(b"\x00" + bytes(r) for r in self.px)
        chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
        png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", self.w, self.h, 8, 2, 0, 0, 0))
               + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))
        with open(path, "wb") as f:
            f.write(png)


def bar_chart(path, title, bars, targets=None, ylabel="", width=900, height=480):
    """bars: [(label, value, (r, g, b))]; targets: [(bar index, value)] drawn as a dashed line over that bar."""
    c = Canvas(width, height)
    left, right, top, bottom = 70, 20, 50, 70
    ymax = max([v for _, v, _ in bars] + [t for _, t in (targets or [])] + [1.0]) * 1.15
    plot_h = height - top - bottom
    y_of = lambda v: top + plot_h * (1 - v / ymax)
    c.text(width // 2, 12, title, scale=3, center=True)
    step = 0.5 if ymax < 4 else 1.0 if ymax < 10 else 2.0
    v = 0.0
    while v <= ymax:  # grid and axis labels
        y = int(y_of(v))
        c.rect(left, y, width - right, y + 1, (220, 220, 220))
        c.text(8, y - 5, f"{v:g}", scale=2)
        v += step
    c.rect(left, top, left + 2, height - bottom, (0, 0, 0))
    c.rect(left, height - bottom, width - right, height - bottom + 2, (0, 0, 0))
    if ylabel:
        c.text(left + 8, top - 14, ylabel, scale=2)
    slot = (width - left - right) / max(1, len(bars))
    for i, (label, value, color) in enumerate(bars):
        x0, x1 = left + slot * i + slot * 0.2, left + slot * (i + 1) - slot * 0.2
        c.rect(x0, y_of(value), x1, height - bottom, color)
        c.text(int((x0 + x1) / 2), int(y_of(value)) - 16, f"{value:.2f}X", scale=2, center=True)
        for j, part in enumerate(label.split("\n")):
            c.text(int((x0 + x1) / 2), height - bottom + 10 + 14 * j, part, scale=2, center=True)
        for ti, tv in targets or []:
            if ti == i:
                y = int(y_of(tv))
                xx = x0 - slot * 0.1
                while xx < x1 + slot * 0.1:
                    c.rect(xx, y, xx + 8, y + 2, (200, 0, 0))
                    xx += 14
                c.text(int(x0 - slot * 0.1), y - 14, f"TARGET {tv:g}", color=(200, 0, 0), scale=2)
    c.save(path)
