"""gpt_ds.tokenizer: the GPT-2 BPE offline, and one clear error when it cannot be had."""

from __future__ import annotations

import subprocess
import sys

from gpt_ds.tokenizer import EOT_TOKEN


def test_r50k_base_is_the_gpt2_bpe(encoding):
    assert encoding.n_vocab == 50257
    assert encoding.eot_token == EOT_TOKEN
    assert encoding.encode_ordinary("Hello world") == [15496, 995]  # GPT-2's ids


def test_no_cache_and_no_network_is_one_clear_error(tmp_path):
    # An empty cache and a proxy that refuses every connection: the download must fail, whatever
    # network this machine has; the user sees one line naming the fix, not a requests traceback.
    env = {
        "TIKTOKEN_CACHE_DIR": str(tmp_path),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "PATH": "/usr/bin:/bin",
    }
    code = (
        "from gpt_ds.errors import run_cli\n"
        "from gpt_ds.tokenizer import get_encoding\n"
        "run_cli(lambda: get_encoding() and 0, 'gpt-ds')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "r50k_base" in proc.stderr and "TIKTOKEN_CACHE_DIR" in proc.stderr


def test_unknown_encoding_lists_the_known_ones():
    import pytest

    from gpt_ds.errors import UserError
    from gpt_ds.tokenizer import get_encoding

    with pytest.raises(UserError, match="r50k_base"):
        get_encoding("no-such-encoding")
