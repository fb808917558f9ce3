"""`make docs` on one small notebook: the notebook is executed (its page holds the output), its TeX is MathML (inline
and display), and the page loads nothing from the web (no MathJax, require.js or Mermaid from a CDN)."""
import re
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from sdaanet.docs import build_docs


def test_docs_page_has_outputs_and_mathml_offline(tmp_path):
    src = tmp_path / 'nbs'
    src.mkdir()
    cells = [new_markdown_cell('# Eq. 12\n\n> The total loss.'),
             new_markdown_cell(r'Inline $L = L_{ce} + \alpha L_{KD}$ and display $$\frac{a}{b} = \sqrt{c}$$'),
             new_code_cell('#| export\nprint(6 * 7)'), new_code_cell('"seen" + " here"')]
    nbformat.write(new_notebook(cells=cells), src / '00_small.ipynb')
    index = build_docs(src, tmp_path / '_docs', n_workers=1, timeout=120)
    page = (tmp_path / '_docs' / '00_small.html').read_text(encoding='utf-8')
    assert '<math' in page and 'display="block"' in page and '<mi>α</mi>' in page
    assert '$L = L_' not in page                                   # no TeX left for a script to typeset
    assert 'mathjax' not in page.lower() and 'cdnjs' not in page
    assert not re.findall(r'<script[^>]+src="https?://|<link[^>]+href="https?://', page)
    assert '42' in page and 'seen here' in page                    # the outputs of the executed cells
    assert '#| export' not in page
    assert 'executed in' in index.read_text() and 'href="00_small.html">Eq. 12</a>' in index.read_text()
