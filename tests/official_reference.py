"""A literal, loop-by-loop transcription of the released forward pass (eval mode), written from
shared/reference/official-implementation.md, "Forward pass". It shares only the weights with `SDAANet`
(reached through the released names) and none of its functions, so the parity tests compare two independent
readings of the same description: per-shot backbone passes, per-shot reweighting, square-map prior."""
import torch
import torch.nn.functional as F


def _up(x, size):
    return F.interpolate(x, size=size, mode='bilinear', align_corners=True)


def _wgap(f, m):
    return (f * m).sum((2, 3), keepdim=True) / (m.sum((2, 3), keepdim=True) + 0.0005)


@torch.no_grad()
def official_eval_logits(model, x, s_x, s_y):
    """Eval-mode logits of the released implementation; x (B,3,H,W), s_x (B,K,3,H,W), s_y (B,K,H,W)."""
    bb, dec, cfg = model.backbone, model.decoder, model.cfg
    H, W = x.shape[-2:]
    K = s_x.shape[1]
    q2 = bb.layer2(bb.layer1(bb.layer0(x)))
    q3 = bb.layer3(q2)
    q4 = bb.layer4(q3)
    query_feat = model.reduce_query(torch.cat([q3, q2], 1))

    feats, masks, protos, corrs = [], [], [], []
    for i in range(K):
        m = (s_y[:, i] == 1).float().unsqueeze(1)
        s2 = bb.layer2(bb.layer1(bb.layer0(s_x[:, i])))
        s3 = bb.layer3(s2)
        m3 = _up(m, s3.shape[-2:])
        s4 = bb.layer4(s3 * m3)
        f = model.reduce_support(torch.cat([s3, s2], 1))
        feats.append(f); masks.append(m3); protos.append(_wgap(f, m3))
        # PFENet prior for this shot
        m4 = _up(m, s4.shape[-2:])
        s4 = s4 * m4
        B, C = q4.shape[:2]
        tq = q4.reshape(B, C, -1)
        tq_norm = torch.norm(tq, 2, 1, True)
        ts = s4.reshape(B, C, -1).permute(0, 2, 1)
        ts_norm = torch.norm(ts, 2, 2, True)
        sim = torch.bmm(ts, tq) / (torch.bmm(ts_norm, tq_norm) + 1e-7)
        sim = sim.max(1)[0]
        sim = (sim - sim.min(1)[0].unsqueeze(1)) / (sim.max(1)[0].unsqueeze(1) - sim.min(1)[0].unsqueeze(1) + 1e-7)
        corrs.append(_up(sim.view(B, 1, *q4.shape[-2:]), q3.shape[-2:]))
    prior = _up(torch.stack(corrs).mean(0), query_feat.shape[-2:])

    extra = [prior]
    if model.saam is not None:
        p = torch.stack(protos).mean(0)
        att_in = torch.cat([query_feat, p.expand(-1, -1, *query_feat.shape[-2:])], 1)
        extra.append(model.saam.query_head(model.saam.extractor(att_in)))

    if model.sdpm is not None:
        a_list, p_list = [], []
        for i in range(K):
            a = (model.sdpm.se(protos[i].flatten(1)).view_as(protos[i]) + 1) / 2     # (B,C,1,1)
            g = feats[i] * a
            query_feat = query_feat * a
            p_list.append(_wgap(g, masks[i])); a_list.append(a)
        supp = torch.stack(p_list).mean(0)
        query_feat = query_feat * (torch.stack(a_list).mean(0) + 1) / 2
    else:
        supp = torch.stack(protos).mean(0)

    pyramid = []
    for idx, tmp_bin in enumerate(dec.bins):
        b = int(query_feat.shape[2] * tmp_bin) if tmp_bin <= 1.0 else int(tmp_bin)
        qb = F.adaptive_avg_pool2d(query_feat, b)
        merge = torch.cat([supp.expand(-1, -1, b, b), qb] + [_up(e, (b, b)) for e in extra], 1)
        merge = dec.init_merge[idx](merge)
        if idx >= 1:
            pre = _up(pyramid[idx - 1], (b, b))
            merge = dec.alpha_conv[idx - 1](torch.cat([merge, pre], 1)) + merge
        merge = dec.beta_conv[idx](merge) + merge
        pyramid.append(_up(merge, query_feat.shape[-2:]))
    out = dec.res1(torch.cat(pyramid, 1))
    out = dec.res2(out) + out
    return _up(dec.cls(out), (H, W))
