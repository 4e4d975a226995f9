"""Several per-mode ControlNets in one call (SD1.5's `controls`): diffusers' MultiControlNetModel, made to
bear a net that skipped its step. With the skip-idle lever each net returns no residuals when its own
scale is 0 (speed.skip_idle_controlnet); the plain MultiControlNetModel would add None to a tensor."""

from __future__ import annotations

from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel


class SkippingMultiControlNet(MultiControlNetModel):
    def forward(self, sample, timestep, encoder_hidden_states, controlnet_cond, conditioning_scale, **kwargs):
        down, mid = None, None
        for image, scale, net in zip(controlnet_cond, conditioning_scale, self.nets, strict=True):
            net_down, net_mid = net(
                sample=sample,
                timestep=timestep,
                encoder_hidden_states=encoder_hidden_states,
                controlnet_cond=image,
                conditioning_scale=scale,
                **kwargs,
            )
            if net_down is None:  # idle at this step: nothing to add
                continue
            if down is None:
                down, mid = list(net_down), net_mid
            else:
                down = [total + part for total, part in zip(down, net_down, strict=True)]
                mid = mid + net_mid
        return down, mid
