# The plugin for CocoaPods projects (Capacitor before 8, or apps that keep
# pods). Everything compiles into one module here, so the plugin's files
# import SwitchboardCore only when it is a module of its own (SwiftPM).
require 'json'

package = JSON.parse(File.read(File.join(__dir__, 'package.json')))

Pod::Spec.new do |s|
  s.name = 'SwitchboardCapacitor'
  s.version = package['version']
  s.summary = package['description']
  s.license = package['license']
  s.homepage = 'https://github.com/switchboard-calls/switchboard'
  s.author = 'Switchboard'
  s.source = { :git => 'https://github.com/switchboard-calls/switchboard.git', :tag => s.version.to_s }
  s.source_files = 'ios/Sources/**/*.swift'
  s.vendored_frameworks = 'ios/Frameworks/SwitchboardCore.xcframework'
  s.ios.deployment_target = '15.0'
  s.dependency 'Capacitor'
  s.dependency 'WebRTC-lib'
  s.swift_version = '5.9'
end
