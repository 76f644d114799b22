use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::optim::{AdamW, Optimizer};
use liera::train::Classifier;
use liera::{Device, Tensor};
use std::time::Instant;
fn main() -> liera::Result<()> {
    let dev = Device::cpu();
    for name in ["micro", "atto"] {
        let cfg = ConvNeXtConfig::preset(name)?
            .with_classes(10)
            .with_in_chans(1);
        let model = ConvNeXt::new(cfg, &dev)?;
        let params = model.trainable_parameters();
        let mut opt = AdamW::new(0.9, 0.999, 1e-8, 0.05)?;
        let x = Tensor::from_slice(&vec![0.1; 64 * 32 * 32], [64, 1, 32, 32], &dev)?;
        let labels: Vec<usize> = (0..64).map(|i| i % 10).collect();
        let mut times = vec![];
        for _ in 0..6 {
            let t = Instant::now();
            let loss = model.forward(&x, true)?.cross_entropy(&labels)?;
            let g = loss.backward()?;
            opt.step(&params, &g, 1e-3)?;
            let _ = loss.to_scalar()?;
            times.push(t.elapsed().as_secs_f64());
        }
        times.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{name}: median step {:.3}s = {:.0} img/s",
            times[3],
            64.0 / times[3]
        );
    }
    Ok(())
}
