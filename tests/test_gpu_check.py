"""`python -m sdaanet.gpu_check`: exit code 2 without a CUDA device, clear errors for bad arguments, and the CPU dry
path (`--device cpu --quick`) through every step: the JSON it writes and the table it prints."""
import json
import pytest
import torch
from sdaanet.gpu_check import main


@pytest.mark.skipif(torch.cuda.is_available(), reason='this machine has a CUDA device')
def test_no_cuda_device_exits_2(tmp_path, capsys):
    assert main(['--out', str(tmp_path / 'g.json')]) == 2
    assert 'no CUDA device' in capsys.readouterr().err and not (tmp_path / 'g.json').exists()


@pytest.mark.parametrize('args, message', [(['--device', 'tpu'], "device='tpu'"), (['--iters', '3'], 'iters=3'),
                                           (['--batch', '0'], 'batch=0')])
def test_bad_arguments_are_named(args, message, capsys):
    with pytest.raises(SystemExit) as e: main(['--device', 'cpu', '--quick', *args])    # the last --device counts
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_cpu_dry_path(tmp_path, capsys):
    out = tmp_path / 'sub' / 'gpu_check.json'
    assert main(['--device', 'cpu', '--quick', '--iters', '5', '--out', str(out)]) == 0
    r = json.loads(out.read_text())
    assert (r['device'], r['quick'], r['backbone'], r['passed']) == ('cpu', True, 'efficientnet_lite0', True)
    assert (r['bench']['fp32']['amp'], r['bench']['amp']['amp']) == ('off', 'bfloat16')
    for row in r['bench'].values():
        assert row['eval']['ratio_to_released'] > 0 and row['train']['step_s']['median'] > 0
    t, a = r['train'], r['amp_vs_fp32']
    assert t['iterations'] == 5 and t['loss_last'] < t['loss_first'] and t['loss_went_down']
    assert a['dtype'] == 'bfloat16' and 0 < a['max_abs_diff'] < 1 and 0.9 < a['pixel_agreement'] <= 1
    table = capsys.readouterr().out
    assert 'bfloat16 vs fp32 logits' in table and 'released' in table and 'passed' in table
