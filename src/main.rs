fn main() {
    println!("{}", tch::Tensor::from_slice(&[1f32, 2.0]).sum(tch::Kind::Float));
}
